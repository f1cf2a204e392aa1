# The fused path's CUDA forward (csrc/cuda/implicit_gemm_forward.cuh), host-emulated, against float64 and columns.
"""``_fused_forward`` samples each 32-channel block of each tap into shared memory (rounded once
to the data dtype, as the column path's columns are) and multiplies it on tensor cores (wmma,
float32 accumulators). The host emulation (``cuda_helpers.load_emulation``) runs it on the CPU:
indexing, layouts, the double-buffered K loop and its barrier, the epilogue. Its error against
float64 must stay within 1.5x the CUDA column path's (emulated too, the same samples and
roundings). Set DEFORMCONV_SKIP_EMULATION=1 to skip.
"""

import pytest
import torch

from cuda_helpers import (
    TENSOR_CORE_DTYPES,
    TENSOR_CORE_SWEEP,
    UNCOVERED_CALLS,
    assert_like_the_column_path,
    misaligned_channels_last,
    put_edge_offsets,
    strided_positions,
    tensor_core_args,
)
from helpers import op_args

# Odd sizes, C_out/groups not multiples of 8 or of the 64-channel tile, a 32 + 8 channel tail,
# offset groups straddling weight groups, 1x1 and 5x5, stride and dilation 2, no mask or bias,
# large offsets, an output smaller than one tile.


def case(dtype, mask=True, bias=True, **kw):
    """Op arguments: data, weight and bias in ``dtype``, offset and mask float32."""
    return tensor_core_args(dtype, ("input", "weight", "bias"), mask=mask, bias=bias, **kw)


def check(emu, a):
    """The kernel's output against float64, within 1.5x the emulated column path's error."""
    got = emu.fused_forward(*op_args(a))
    col = emu.forward(*op_args(a))
    exact = [v.double() if isinstance(v, torch.Tensor) else v for v in op_args(a)]
    ref = torch.ops.deformconv.deform_conv2d(*exact)
    assert got.dtype == a["input"].dtype and got.shape == ref.shape
    assert_like_the_column_path(got, col, ref)
    return got


@pytest.mark.parametrize("dname", list(TENSOR_CORE_DTYPES))
@pytest.mark.parametrize("name", list(TENSOR_CORE_SWEEP))
def test_matches_float64_like_the_column_path(emu, name, dname):
    check(emu, case(TENSOR_CORE_DTYPES[dname], **TENSOR_CORE_SWEEP[name]))


def test_boundary_and_non_finite_offsets(emu):
    """Offsets at exactly -1 and H, NaN, +-inf and 1e30: the op's sampling rule (0 where the
    point is undefined, whatever the mask), so the output stays finite."""
    a = case(torch.float16, c_in=16, c_out=16, h=8, w=9)
    put_edge_offsets(a)
    assert torch.isfinite(check(emu, a)).all()


def test_layouts_and_index_widths_give_the_same_bits(emu, monkeypatch):
    """channels_last input gives a channels_last output with the same values; strided offset
    and mask, and the int64 index build, give the same bits."""
    a = case(torch.bfloat16, c_in=16, c_out=24, h=9, w=10, offset_groups=2)
    base = emu.fused_forward(*op_args(a))
    assert base.is_contiguous()
    b = strided_positions(a)
    b["input"] = a["input"].contiguous(memory_format=torch.channels_last)
    cl = emu.fused_forward(*op_args(b))
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl, base)
    b["input"] = misaligned_channels_last(a["input"])
    assert torch.equal(emu.fused_forward(*op_args(b)), cl)
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    assert torch.equal(emu.fused_forward(*op_args(a)), base)


def test_data_dtype_positions_and_batch_zero(emu):
    a = case(torch.float16, c_in=16, c_out=8)
    a["offset"], a["mask"] = a["offset"].half(), a["mask"].half()
    check(emu, a)
    empty = {k: v[:0] if isinstance(v, torch.Tensor) and k not in ("weight", "bias") else v
             for k, v in a.items()}  # fmt: skip
    out = emu.fused_forward(*op_args(empty))
    assert out.shape == (0, 8, 7, 6)


@pytest.mark.parametrize("change, message", UNCOVERED_CALLS)
def test_uncovered_calls_raise_clear_errors(emu, change, message):
    change = dict(change)  # UNCOVERED_CALLS is shared
    dtype = change.pop("dtype", torch.float16)
    a = case(dtype, **change)
    with pytest.raises(RuntimeError, match=message):
        emu.fused_forward(*op_args(a))


def test_meta_kernel_gives_the_forward_shape_and_layout():
    a = case(torch.float16, c_in=16, c_out=8, h=9, w=11)
    meta = [v.to("meta") if isinstance(v, torch.Tensor) else v for v in op_args(a)]
    meta[0] = meta[0].contiguous(memory_format=torch.channels_last)
    out = torch.ops.deformconv._fused_forward(*meta)
    assert out.shape == (2, 8, 9, 11) and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last)
