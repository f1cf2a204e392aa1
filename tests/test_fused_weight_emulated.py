# The fused path's CUDA weight side (csrc/cuda/implicit_gemm_weight.cuh), host-emulated, against float64 and columns.
"""``_fused_weight_grad`` re-samples A into shared memory tile by tile and adds A^T . grad_output
on tensor cores (wmma, float32 accumulators), one float32 partial per pixel split, the splits
added in order. The host emulation (``cuda_helpers.load_emulation``) runs it on the CPU. Its
result rounded to the weight's dtype must stay within 1.5x the emulated CUDA column path's error
against float64. Set DEFORMCONV_SKIP_EMULATION=1 to skip.
"""

import pytest
import torch

from cuda_helpers import (
    BWD,
    TENSOR_CORE_DTYPES,
    TENSOR_CORE_SWEEP,
    UNCOVERED_CALLS,
    assert_like_the_column_path,
    misaligned_channels_last,
    put_edge_offsets,
    run_op,
    strided_positions,
    tensor_core_args,
)


def case(dtype, mask=True, **kw):
    """Op arguments (data and weight in ``dtype``, offset and mask float32) and a grad_output."""
    a = tensor_core_args(dtype, mask=mask, bias=False, **kw)
    y = run_op(a)
    a["grad_output"] = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    return a


def args_of(a):
    keys = ("grad_output", "input", "weight", "offset", "mask", "stride", "padding", "dilation")
    return [a[k] for k in keys]


def as_weight(gw, weight):
    """[groups, kh*kw*C_g, C_og] (K ordered (tap, channel)) -> weight's [C_out, C_g, kh, kw]."""
    c_out, c_g, kh, kw = weight.shape
    groups = gw.shape[0]
    return (
        gw.reshape(groups, kh * kw, c_g, c_out // groups).permute(0, 3, 2, 1).reshape(weight.shape)
    )


def check(emu, a):
    gw = emu.fused_weight_grad(*args_of(a))
    g, x, w, off, m, s, p, d = args_of(a)
    col = emu.backward(g, x, w, off, m, None, s, p, d)[1]
    exact = [v.double() if isinstance(v, torch.Tensor) else v for v in (g, x, w, off, m)]
    ref = BWD(*exact, None, s, p, d)[1]
    assert gw.dtype == torch.float32
    got = as_weight(gw, w).to(w.dtype)
    assert_like_the_column_path(got, col, ref)
    return gw


@pytest.mark.parametrize("dname", list(TENSOR_CORE_DTYPES))
@pytest.mark.parametrize("name", list(TENSOR_CORE_SWEEP))
def test_matches_float64_like_the_column_path(emu, name, dname):
    check(emu, case(TENSOR_CORE_DTYPES[dname], **TENSOR_CORE_SWEEP[name]))


def test_boundary_and_non_finite_offsets(emu):
    a = case(torch.float16, c_in=16, c_out=16, h=8, w=9)
    put_edge_offsets(a)
    assert torch.isfinite(check(emu, a)).all()


def test_layouts_and_index_widths_give_the_same_bits(emu, monkeypatch):
    a = case(torch.bfloat16, c_in=16, c_out=24, h=9, w=10, offset_groups=2)
    base = emu.fused_weight_grad(*args_of(a))
    b = strided_positions(a)
    b["input"] = a["input"].contiguous(memory_format=torch.channels_last)
    b["grad_output"] = a["grad_output"].contiguous(memory_format=torch.channels_last)
    assert torch.equal(emu.fused_weight_grad(*args_of(b)), base)
    b["input"] = misaligned_channels_last(a["input"])
    b["grad_output"] = misaligned_channels_last(a["grad_output"])
    assert torch.equal(emu.fused_weight_grad(*args_of(b)), base)
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    assert torch.equal(emu.fused_weight_grad(*args_of(a)), base)


def test_batch_zero_gives_zeros(emu):
    a = case(torch.float16, c_in=8, c_out=8)
    empty = {k: v[:0] if isinstance(v, torch.Tensor) and k != "weight" else v for k, v in a.items()}
    gw = emu.fused_weight_grad(*args_of(empty))
    assert gw.shape == (1, 9 * 8, 8) and not gw.any()


@pytest.mark.parametrize("change, message", UNCOVERED_CALLS)
def test_uncovered_calls_raise_clear_errors(emu, change, message):
    change = dict(change)  # UNCOVERED_CALLS is shared
    dtype = change.pop("dtype", torch.float16)
    a = case(dtype, **change)
    with pytest.raises(RuntimeError, match=message):
        emu.fused_weight_grad(*args_of(a))


def test_meta_kernel_gives_the_gemm_layout():
    a = case(torch.float16, c_in=16, c_out=12, groups=2, h=9, w=11)
    meta = [v.to("meta") if isinstance(v, torch.Tensor) else v for v in args_of(a)]
    gw = torch.ops.deformconv._fused_weight_grad(*meta)
    assert gw.shape == (2, 9 * 8, 6) and gw.dtype == torch.float32
