# ONNX export of deformconv::deform_conv2d: its translation to the standard ONNX DeformConv operator (opset 19).
"""Translation of ``deformconv::deform_conv2d`` for ``torch.onnx.export(..., dynamo=True)``.

The op maps one to one onto the standard ONNX ``DeformConv`` operator (opset 19): same
layouts (torchvision's), inputs ``X, W, offset, B, mask``; ``group`` and ``offset_group``
are read from the static channel dimensions, so the batch (and H, W) may be dynamic.

Two ways to use it (needs the optional extra ``deformconv[onnx]``: onnx, onnxscript, onnxruntime):

- plain ``torch.onnx.export(model, args, dynamo=True)`` after ``import deformconv``: the
  package registers :data:`translation` in onnxscript's torch_lib registry, which
  ``torch.onnx`` reads on every export (torchvision's ``deform_conv2d`` is translated
  through the same registry). The registration happens lazily, when torch.onnx first
  imports the torch_lib ops, so ``import deformconv`` never imports onnxscript;
- ``torch.onnx.export(..., custom_translation_table=deformconv.onnx.custom_translation_table())``:
  torch.onnx's documented argument for custom ops, independent of that registry.

Runtime support (onnxruntime 1.32, CPU): DeformConv runs in float32, float16 and float64.
ORT has no float64 ``Conv`` kernel, so a float64 :class:`~deformconv.DeformConv2dPack`
(whose offset branch is an ``nn.Conv2d``) fails at ``InferenceSession`` creation with
NOT_IMPLEMENTED for ``Conv``; bfloat16 is rejected by ORT. Export in float32 (or float16).
"""

from typing import Callable, Dict, Optional, Sequence

import torch

try:
    import onnxscript
    import onnxscript.evaluator
    from onnxscript import opset19
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat
except ImportError as error:
    raise ImportError(
        "deformconv.onnx needs the optional extra deformconv[onnx]: pip install onnx onnxruntime "
        f"onnxscript ({error})"
    ) from error

__all__ = ["OP_NAME", "translation", "custom_translation_table", "register"]

OP_NAME = "deformconv::deform_conv2d"


def _static(value, what: str) -> int:
    if not isinstance(value, int):
        raise ValueError(
            f"ONNX export of {OP_NAME} needs a static {what} (it sets DeformConv's group / "
            f"offset_group): got {value!r}; keep channel and kernel dimensions static in dynamic_shapes"
        )
    return value


def _check_opset() -> None:
    # The exporter's evaluator knows the target opset; DeformConv exists from opset 19 on.
    version = getattr(getattr(onnxscript.evaluator.default(), "opset", None), "version", None)
    if isinstance(version, int) and version < 19:
        raise ValueError(
            f"ONNX export of {OP_NAME} needs opset_version >= 19 (ONNX DeformConv): got {version}"
        )


def deform_conv2d_onnx(
    input: TFloat,
    weight: TFloat,
    offset: TFloat,
    mask: Optional[TFloat],
    bias: Optional[TFloat],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> TFloat:
    """deformconv::deform_conv2d(input, weight, offset, mask, bias, stride, padding, dilation)
    as one ONNX DeformConv node (traced by onnxscript; arguments are the exporter's symbolic tensors).

    input ``[N, C_in, H, W]``, weight ``[C_out, C_in/groups, kh, kw]``, offset
    ``[N, 2*og*kh*kw, Ho, Wo]``, mask ``[N, og*kh*kw, Ho, Wo]`` or None, bias ``[C_out]`` or None.
    """
    _check_opset()
    c_in = _static(input.shape[1], "input channel count (input.shape[1])")
    c_per_group = _static(weight.shape[1], "weight.shape[1]")
    taps = _static(weight.shape[2], "kernel height") * _static(weight.shape[3], "kernel width")
    offset_channels = _static(offset.shape[1], "offset channel count (offset.shape[1])")
    pad_h, pad_w = padding
    return opset19.DeformConv(
        input,
        weight,
        offset,
        bias,
        mask,
        dilations=list(dilation),
        strides=list(stride),
        pads=[pad_h, pad_w, pad_h, pad_w],
        group=c_in // c_per_group,
        offset_group=offset_channels // (2 * taps),
    )


#: The onnxscript (trace-only) function that translates the op.
translation = onnxscript.TracedOnnxFunction(
    onnxscript.values.Opset("pkg.deformconv", 1), deform_conv2d_onnx
)


def custom_translation_table() -> Dict[Callable, Callable]:
    """``{torch.ops.deformconv.deform_conv2d.default: translation}`` for
    ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``."""
    return {torch.ops.deformconv.deform_conv2d.default: translation}


def register() -> None:
    """Register :data:`translation` in onnxscript's torch_lib registry (idempotent), so that a
    plain ``torch.onnx.export(..., dynamo=True)`` translates the op. ``import deformconv`` calls
    it when torch.onnx loads the torch_lib ops; call it yourself only if that hook did not run."""
    from onnxscript.function_libs.torch_lib import registration

    if OP_NAME in registration.default_registry:
        return
    # torch.onnx reads each registered function's signature IR; check it builds before
    # registering, because a function that fails there would break every export.
    translation.function_ir  # noqa: B018
    registration.default_registry.register(translation, OP_NAME)
