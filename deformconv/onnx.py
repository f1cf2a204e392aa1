# ONNX export of the package's ops: deform_conv2d as ONNX DeformConv (opset 19), dcnv3 / dcnv4 as GridSample graphs.
"""Translations of ``deformconv::deform_conv2d``, ``deformconv::dcnv3`` and ``deformconv::dcnv4``
for ``torch.onnx.export(..., dynamo=True)``.

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

``dcnv3`` and ``dcnv4`` have no ONNX operator: :data:`dcnv3_translation` and
:data:`dcnv4_translation` decompose them into standard ops (GridSample with zeros padding and
``align_corners=0`` for the bilinear samples, Mul and ReduceSum for the mask-weighted sum,
Reshape / Transpose for the layouts), the pure-PyTorch grid_sample formulation written in ONNX.
The sample coordinates are computed in float32 (float64 for a float64 input) from constant
kernel-grid tensors, so H, W and the channel count must stay static; the batch is dynamic.

Runtime support (onnxruntime 1.32, CPU): DeformConv runs in float32, float16 and float64.
ORT has no float64 ``Conv`` kernel, so a float64 :class:`~deformconv.DeformConv2dPack`
(whose offset branch is an ``nn.Conv2d``) fails at ``InferenceSession`` creation with
NOT_IMPLEMENTED for ``Conv``; bfloat16 is rejected by ORT. Export in float32 (or float16).
The dcnv3 / dcnv4 graphs are tested in float32.
"""

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .reference import _family_points

try:
    import onnxscript
    import onnxscript.evaluator
    from onnxscript import ir, opset18, opset19
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat
except ImportError as error:
    raise ImportError(
        "deformconv.onnx needs the optional extra deformconv[onnx]: pip install onnx onnxruntime "
        f"onnxscript ({error})"
    ) from error

__all__ = [
    "OP_NAME",
    "translation",
    "dcnv3_translation",
    "dcnv4_translation",
    "custom_translation_table",
    "register",
]

OP_NAME = "deformconv::deform_conv2d"
DCNV3_OP_NAME = "deformconv::dcnv3"
DCNV4_OP_NAME = "deformconv::dcnv4"


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


def _static_dims(tensor, what: str, op_name: str) -> list:
    dims = list(tensor.shape)
    for i, dim in enumerate(dims[1:], start=1):
        if not isinstance(dim, int):
            raise ValueError(
                f"ONNX export of {op_name} needs a static {what}.shape[{i}] (its sample grid is "
                f"a constant): got {dim!r}; keep only the batch dimension dynamic"
            )
    return dims


def _family_grid_constants(
    kernel, stride, padding, dilation, offset_scale, remove_center, h_out, w_out
):
    """The undeformed sample points ``base_x, base_y`` (float64 ``[1, Ho, Wo, 1, P]``) in input
    pixels: ``x = wo*sw - pw + hw + (iw*dw - hw)*s``, taps w outer, h inner (the op's rule)."""
    kh, kw = kernel
    half_h, half_w = dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2
    taps = _family_points(kh, kw, bool(remove_center))
    tap_y = np.array([(ih * dilation[0] - half_h) * offset_scale for ih, _ in taps])
    tap_x = np.array([(iw * dilation[1] - half_w) * offset_scale for _, iw in taps])
    ref_y = np.arange(h_out) * stride[0] - padding[0] + half_h
    ref_x = np.arange(w_out) * stride[1] - padding[1] + half_w
    base_y = ref_y[:, None, None] + tap_y[None, None, :] + np.zeros((1, w_out, 1))
    base_x = ref_x[None, :, None] + tap_x[None, None, :] + np.zeros((h_out, 1, 1))
    points = len(taps)
    return base_x.reshape(1, h_out, w_out, 1, points), base_y.reshape(1, h_out, w_out, 1, points)


def _constant(value, dtype):
    """A Constant node holding ``value`` (a float or an array) in the IR dtype ``dtype``."""
    return opset18.Constant(value=ir.tensor(np.asarray(value, dtype=dtype.numpy()), dtype=dtype))


def _normalised(coord, base, offset_scale: float, size: int, dtype):
    """GridSample's coordinate (align_corners=0) of ``base + offset * s`` in pixels; NaN -> -2 and
    everything clipped to [-2, size + 1] first, so non-finite or huge offsets sample 0."""
    op = opset18
    pixels = op.Add(_constant(base, dtype), op.Mul(coord, _constant(offset_scale, dtype)))
    minus_two = _constant(-2.0, dtype)
    pixels = op.Where(op.IsNaN(pixels), minus_two, pixels)
    pixels = op.Clip(pixels, minus_two, _constant(size + 1.0, dtype))
    return op.Add(op.Mul(pixels, _constant(2.0 / size, dtype)), _constant(1.0 / size - 1.0, dtype))


def _family_onnx(input, offset, mask, params, op_name: str):
    """The DCNv3 / DCNv4 sum as standard ops: input ``[N, H, W, C]`` -> ``[N, Ho, Wo, C]``.
    DCNv3: offset ``[N, Ho, Wo, G*P*2]`` and mask ``[N, Ho, Wo, G*P]``; DCNv4 (mask None):
    offset is offset_mask ``[N, Ho, Wo, L]``, per group 2P offsets then P weights."""
    op = opset18
    _, height, width, channels = _static_dims(input, "input", op_name)
    _, h_out, w_out, _ = _static_dims(
        offset, "offset" if mask is not None else "offset_mask", op_name
    )
    kernel, stride, padding, dilation, group, offset_scale, remove_center = params
    if group <= 0 or channels % group:
        raise ValueError(
            f"ONNX export of {op_name}: group {group} does not divide {channels} channels"
        )
    depth = channels // group
    base_x, base_y = _family_grid_constants(
        kernel, stride, padding, dilation, offset_scale, remove_center, h_out, w_out
    )
    points = base_x.shape[-1]
    if mask is None:  # DCNv4: drop the padding, split each group's 3P values
        packed = op.Slice(offset, [0], [group * 3 * points], [3])
        packed = op.Reshape(packed, [-1, h_out, w_out, group, 3 * points])
        offset = op.Slice(packed, [0], [2 * points], [4])
        mask = op.Slice(packed, [2 * points], [3 * points], [4])
    offset_xy = op.Reshape(offset, [-1, h_out, w_out, group, points, 2])
    # Coordinates in float32 (float64 for a float64 input), as the kernels' opmath.
    coord_type = ir.DataType.DOUBLE if input.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT
    offset_xy = op.Cast(offset_xy, to=coord_type)
    ox = op.Squeeze(op.Slice(offset_xy, [0], [1], [5]), [5])  # [N, Ho, Wo, G, P]
    oy = op.Squeeze(op.Slice(offset_xy, [1], [2], [5]), [5])
    gx = _normalised(ox, base_x, offset_scale, width, coord_type)
    gy = _normalised(oy, base_y, offset_scale, height, coord_type)
    grid = op.Concat(op.Unsqueeze(gx, [5]), op.Unsqueeze(gy, [5]), axis=5)
    grid = op.Transpose(grid, perm=[0, 3, 1, 2, 4, 5])  # [N, G, Ho, Wo, P, 2]
    grid = op.CastLike(op.Reshape(grid, [-1, h_out * w_out, points, 2]), input)
    planes = op.Transpose(op.Reshape(input, [-1, height * width, group, depth]), perm=[0, 2, 3, 1])
    planes = op.Reshape(planes, [-1, depth, height, width])  # [N*G, D, H, W]
    samples = op.GridSample(planes, grid, align_corners=0, mode="bilinear", padding_mode="zeros")
    weights = op.Transpose(
        op.Reshape(op.CastLike(mask, input), [-1, h_out * w_out, group, points]), perm=[0, 2, 1, 3]
    )
    weights = op.Reshape(weights, [-1, 1, h_out * w_out, points])  # [N*G, 1, Ho*Wo, P]
    out = op.ReduceSum(op.Mul(samples, weights), [3], keepdims=0)  # [N*G, D, Ho*Wo]
    out = op.Transpose(op.Reshape(out, [-1, channels, h_out * w_out]), perm=[0, 2, 1])
    return op.Reshape(out, [-1, h_out, w_out, channels])


def dcnv3_onnx(
    input: TFloat,
    offset: TFloat,
    mask: TFloat,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    group: int,
    offset_scale: float,
    remove_center: bool,
) -> TFloat:
    """deformconv::dcnv3 as standard ONNX ops (traced by onnxscript): input ``[N, H, W, G*D]``,
    offset ``[N, Ho, Wo, G*P*2]``, mask ``[N, Ho, Wo, G*P]`` -> ``[N, Ho, Wo, G*D]``."""
    params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    return _family_onnx(input, offset, mask, params, DCNV3_OP_NAME)


def dcnv4_onnx(
    input: TFloat,
    offset_mask: TFloat,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    group: int,
    offset_scale: float,
    remove_center: bool,
) -> TFloat:
    """deformconv::dcnv4 as standard ONNX ops: offset_mask ``[N, Ho, Wo, L]`` holds per group
    2P offsets then P mask weights (L = G*3P rounded up to 8, the rest ignored)."""
    params = (kernel_size, stride, padding, dilation, group, offset_scale, remove_center)
    return _family_onnx(input, offset_mask, None, params, DCNV4_OP_NAME)


#: The onnxscript (trace-only) functions that translate the DCNv3 / DCNv4 core ops.
dcnv3_translation = onnxscript.TracedOnnxFunction(
    onnxscript.values.Opset("pkg.deformconv", 1), dcnv3_onnx
)
dcnv4_translation = onnxscript.TracedOnnxFunction(
    onnxscript.values.Opset("pkg.deformconv", 1), dcnv4_onnx
)
_TRANSLATIONS = {
    OP_NAME: translation,
    DCNV3_OP_NAME: dcnv3_translation,
    DCNV4_OP_NAME: dcnv4_translation,
}


def custom_translation_table() -> Dict[Callable, Callable]:
    """``{torch.ops.deformconv.deform_conv2d.default: translation, ...dcnv3...: dcnv3_translation,
    ...dcnv4...: dcnv4_translation}`` (the ops this build registers) for
    ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)`` (an export with it:
    docs/deployment.md).

    Example::

        >>> import torch
        >>> table = custom_translation_table()
        >>> table[torch.ops.deformconv.deform_conv2d.default] is translation
        True
        >>> sorted(str(op) for op in table)
        ['deformconv.dcnv3.default', 'deformconv.dcnv4.default', 'deformconv.deform_conv2d.default']
    """
    table = {}
    for name, function in _TRANSLATIONS.items():
        packet = getattr(torch.ops.deformconv, name.split("::")[1], None)
        if packet is not None:
            table[packet.default] = function
    return table


def register() -> None:
    """Register :data:`translation`, :data:`dcnv3_translation` and :data:`dcnv4_translation` in
    onnxscript's torch_lib registry (idempotent), so that a plain
    ``torch.onnx.export(..., dynamo=True)`` translates the ops. ``import deformconv`` calls
    it when torch.onnx loads the torch_lib ops; call it yourself only if that hook did not run.

    Example::

        >>> from onnxscript.function_libs.torch_lib import registration
        >>> register()
        >>> register()  # idempotent: each op is registered once
        >>> [name in registration.default_registry for name in (OP_NAME, DCNV3_OP_NAME)]
        [True, True]
    """
    from onnxscript.function_libs.torch_lib import registration

    for name, function in _TRANSLATIONS.items():
        if name in registration.default_registry:
            continue
        # torch.onnx reads each registered function's signature IR; check it builds before
        # registering, because a function that fails there would break every export.
        function.function_ir  # noqa: B018
        registration.default_registry.register(function, name)
