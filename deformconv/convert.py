# convert_to_deformable: swap a model's eligible nn.Conv2d layers for DeformConv2dPack, keeping outputs and weights.
from typing import Dict, Iterable, List, Optional, Tuple, Union

from torch import nn

from .modules import DeformConv2dPack

# 2 * sigmoid(0) == 1 exactly: the zero-initialised mask branch then leaves every tap unscaled.
_IDENTITY_MASK_SCALE = 2.0


def _symmetric_padding(conv: nn.Conv2d) -> Optional[Tuple[int, int]]:
    """The conv's padding as (pad_h, pad_w), or None when it is not symmetric zero padding."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":  # Conv2d allows it only with stride 1; total padding d*(k-1) per dim
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in totals) else (totals[0] // 2, totals[1] // 2)
    return tuple(conv.padding)


def _is_eligible(module: nn.Module) -> bool:
    """Exactly nn.Conv2d (subclasses may change forward), kernel larger than 1x1, symmetric zero padding."""
    return (
        type(module) is nn.Conv2d
        and module.kernel_size[0] * module.kernel_size[1] > 1
        and _symmetric_padding(module) is not None
    )


def _matches(name: str, prefix: str) -> bool:
    """``name`` is the module ``prefix`` or lies inside it (whole dotted components)."""
    return name == prefix or name.startswith(prefix + ".")


def _to_pack(conv: nn.Conv2d, offset_groups: int, modulated: bool) -> DeformConv2dPack:
    """A DeformConv2dPack sharing conv's weight and bias Parameters, same geometry, on conv's device and dtype."""
    pack = DeformConv2dPack(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=_symmetric_padding(conv),
        dilation=conv.dilation,
        groups=conv.groups,
        offset_groups=offset_groups,
        bias=conv.bias is not None,
        modulated=modulated,
        mask_scale=_IDENTITY_MASK_SCALE if modulated else 1.0,
    )
    pack.to(device=conv.weight.device, dtype=conv.weight.dtype)
    pack.weight = (
        conv.weight
    )  # the same Parameter objects: values, requires_grad and optimizer state carry over
    pack.bias = conv.bias
    return pack.train(conv.training)


def convert_to_deformable(
    module: nn.Module,
    include: Optional[Union[str, Iterable[str]]] = None,
    *,
    offset_groups: int = 1,
    modulated: bool = True,
) -> nn.Module:
    """Replace eligible ``nn.Conv2d`` layers by :class:`DeformConv2dPack` that compute the same thing.

    Eligible: exactly ``nn.Conv2d`` (not a subclass), kernel larger than 1x1, zero padding
    that is symmetric (ints, ``"valid"``, or ``"same"`` with an even total). Each one becomes
    a Pack with its stride, padding, dilation and groups that *shares* its ``weight`` and
    ``bias`` Parameters, plus a zero-initialised ``conv_offset`` branch. The converted model
    computes what the original computed: offsets start at 0 and, for ``modulated=True``,
    the mask is ``2 * sigmoid(0) = 1`` (``mask_scale=2``). State-dict keys of the original
    survive with their values; the only new keys are ``<conv name>.conv_offset.weight`` and
    ``.bias``. To reload a saved converted model, convert a fresh model the same way and
    call ``load_state_dict``.

    Args:
        module: the model; changed in place. A bare eligible ``nn.Conv2d`` is replaced by
            the returned Pack.
        include: module-name prefixes (``"layer3"`` covers ``"layer3.0.conv2"``, not
            ``"layer30"``); None converts every eligible conv.
        offset_groups: offset groups of each Pack; must divide each converted conv's in_channels.
        modulated: DCNv2 (predicted mask) or DCNv1 (offsets only).

    Returns:
        ``module`` (or the new Pack when ``module`` itself was converted).

    Raises:
        ValueError: a prefix of ``include`` (or, for None, the model) has no eligible conv,
            or ``offset_groups`` does not divide a converted conv's channels.

    Example::

        >>> import torchvision
        >>> model = torchvision.models.resnet50()
        >>> model = convert_to_deformable(model, include=["layer2", "layer3", "layer4"])
        >>> sum(isinstance(m, DeformConv2dPack) for m in model.modules())
        13
    """
    prefixes: Optional[List[str]] = None
    if include is not None:
        prefixes = [include] if isinstance(include, str) else list(include)
        if not prefixes:
            raise ValueError(
                "include is empty: pass module-name prefixes, or None for every eligible conv"
            )
    # remove_duplicate=False: a conv registered under two names is replaced under both.
    named = [(n, m) for n, m in module.named_modules(remove_duplicate=False) if _is_eligible(m)]
    if prefixes is not None:
        unmatched = [p for p in prefixes if not any(_matches(n, p) for n, _ in named)]
        if unmatched:
            eligible = ", ".join(n or "<root>" for n, _ in named[:8]) + (
                ", ..." if len(named) > 8 else ""
            )
            raise ValueError(
                f"include prefixes {unmatched} match no eligible nn.Conv2d (kernel > 1x1, symmetric "
                f"zero padding); eligible module names: {eligible or 'none'}"
            )
        named = [(n, m) for n, m in named if any(_matches(n, p) for p in prefixes)]
    if not named:
        raise ValueError(
            f"{type(module).__name__} has no eligible nn.Conv2d to convert (kernel > 1x1, symmetric zero padding)"
        )

    packs: Dict[
        int, DeformConv2dPack
    ] = {}  # all built before any is swapped in: an error changes nothing
    for name, conv in named:
        if id(conv) not in packs:
            try:
                packs[id(conv)] = _to_pack(conv, offset_groups, modulated)
            except ValueError as error:
                raise ValueError(f"cannot convert {name or '<root>'}: {error}") from error
    for name, conv in named:
        if not name:
            return packs[id(conv)]
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, packs[id(conv)])
    return module
