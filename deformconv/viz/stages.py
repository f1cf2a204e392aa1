# The spatial layers of a model recorded by forward hooks in run order (deformable ones with their offsets, masks).
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ..modules import DeformConv2d, DeformConv2dPack


@dataclass
class Stage:
    """One spatial layer as it ran (see :func:`record_stages`).

    Attributes:
        name: the module's name in the model (``named_modules``).
        kernel_size, stride, padding, dilation: ``(h, w)`` pairs.
        in_size, out_size: ``(H, W)`` of its input and output maps.
        deformable: a ``DeformConv2d`` / ``DeformConv2dPack``.
        offset: deformable only: ``Tensor[N, 2*og*kh*kw, H_out, W_out]`` (dy, dx per tap).
        mask: deformable only: ``Tensor[N, og*kh*kw, H_out, W_out]`` or None (all ones).
        response: deformable only: ``Tensor[N, H_out, W_out]``, L2 norm of its output over
            channels (where the layer responds most).

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> stage = viz.record_stages(model, torch.randn(2, 3, 8, 8))[0]
        >>> stage.kernel_size, stage.padding, tuple(stage.offset.shape)
        ((3, 3), (1, 1), (2, 18, 8, 8))
    """

    name: str
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    deformable: bool = False
    offset: Optional[Tensor] = None
    mask: Optional[Tensor] = None
    response: Optional[Tensor] = None


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":  # centred window: o maps to o
        return tuple(d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation))
    return _pair(module.padding)


def _fixed_stage(name: str, module: nn.Module, inp: Tensor, out: Tensor) -> Stage:
    if isinstance(module, nn.Conv2d):
        geometry = (module.kernel_size, module.stride, _conv_padding(module), module.dilation)
    else:  # pools; stride None means the kernel size
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride) if module.stride is not None else kernel
        dilation = _pair(getattr(module, "dilation", 1))
        geometry = (kernel, stride, _pair(module.padding), dilation)
    kernel, stride, padding, dilation = (tuple(int(v) for v in g) for g in geometry)
    return Stage(
        name, kernel, stride, padding, dilation, tuple(inp.shape[-2:]), tuple(out.shape[-2:])
    )


def _at_least_float32(t: Tensor) -> Tensor:
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _deform_stage(name: str, module: DeformConv2d, args, kwargs, out: Tensor) -> Stage:
    inp = args[0] if args else kwargs["input"]
    if isinstance(module, DeformConv2dPack):
        offset, mask = module._predict_offset_mask(inp)
    else:
        offset = args[1] if len(args) > 1 else kwargs["offset"]
        mask = args[2] if len(args) > 2 else kwargs.get("mask")
    return Stage(
        name,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        tuple(inp.shape[-2:]),
        tuple(out.shape[-2:]),
        deformable=True,
        offset=_at_least_float32(offset),
        mask=None if mask is None else _at_least_float32(mask),
        response=out.detach().float().norm(dim=1),
    )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def record_stages(model: nn.Module, images: Tensor) -> list[Stage]:
    """Run ``model(images)`` once (eval mode, no grad) and record its spatial layers.

    Hooks go on every ``DeformConv2d`` / ``DeformConv2dPack`` (the offset/mask predictor
    inside a ``DeformConv2dPack`` is not a stage of its own), ``nn.Conv2d``,
    ``nn.MaxPool2d`` and ``nn.AvgPool2d``; the model's train/eval mode is restored after.

    Args:
        model: any module; called as ``model(images)``.
        images: ``Tensor[N, C, H, W]``, moved to the model's device.

    Returns:
        The stages in the order they ran.

    Example::

        >>> import torch
        >>> from deformconv import DeformConv2dPack, viz
        >>> model = torch.nn.Sequential(DeformConv2dPack(3, 4, 3, padding=1), DeformConv2dPack(4, 4, 3))
        >>> stages = viz.record_stages(model, torch.randn(1, 3, 8, 8))
        >>> [(s.name, s.deformable, s.out_size) for s in stages]
        [('0', True, (8, 8)), ('1', True, (6, 6))]
    """
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a Tensor[N, C, H, W]: got {shape}")
    names = {id(m): name for name, m in model.named_modules()}
    deformables = [m for m in model.modules() if isinstance(m, DeformConv2d)]
    inner = {id(c) for d in deformables for c in d.modules() if c is not d}
    stages: list[Stage] = []
    handles = []

    def fixed_hook(module, args, out):
        stages.append(_fixed_stage(names[id(module)], module, args[0], out))

    def deform_hook(module, args, kwargs, out):
        stages.append(_deform_stage(names[id(module)], module, args, kwargs, out))

    for module in model.modules():
        if id(module) in inner:
            continue
        if isinstance(module, DeformConv2d):
            handles.append(module.register_forward_hook(deform_hook, with_kwargs=True))
        elif isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            handles.append(module.register_forward_hook(fixed_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images.to(_model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stages


# ------------------------------------------------------------------------- geometry


def tap_offsets(stage: Stage, device) -> tuple[Tensor, Tensor]:
    """Per-tap ``(i*dh, j*dw)`` of a stage: two ``Tensor[kh*kw]`` float64."""
    kh, kw = stage.kernel_size
    i = torch.arange(kh, dtype=torch.float64, device=device).repeat_interleave(kw)
    j = torch.arange(kw, dtype=torch.float64, device=device).repeat(kh)
    return i * stage.dilation[0], j * stage.dilation[1]
