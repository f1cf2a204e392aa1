# The fused Triton kernels on CPU tensors under TRITON_INTERPRET=1; run in a child process by test_fused_gpu.py.
"""Triton reads TRITON_INTERPRET when it and the kernels are first imported, so these tests need a
process that set it before importing triton (``test_fused_gpu.py`` starts one; the file is not
named ``test_*.py`` so that pytest does not collect it into a process without it). bfloat16 is
wrong under the interpreter, so it is tested on a GPU only (benchmarks/fused_gpu_check.py).

    TRITON_INTERPRET=1 python -m pytest -q tests/fused_gpu_interpreted.py
"""

import pytest
import torch
from helpers import make_args, op_args, oracle

pytest.importorskip("triton")

from deformconv import _fused_gpu  # noqa: E402
from deformconv._fused_gpu import config as fused_config  # noqa: E402

KEYS = ("input", "weight", "offset", "mask", "bias")
OP = torch.ops.deformconv.deform_conv2d


from deformconv._fused_gpu import kernels  # noqa: E402
from deformconv._fused_gpu import op as fused_op  # noqa: E402

if not kernels.INTERPRETED:
    raise RuntimeError("run with TRITON_INTERPRET=1 set before triton is imported")


def _interpreter_runs_dynamic_loops() -> bool:
    """Triton 3.6's interpreter fails on any loop with a runtime bound under NumPy 2.4
    (``int()`` of a 1-element array); newer ones do not."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(out_ptr, n, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for _ in range(0, n, BLOCK):
            acc += 1.0
        tl.store(out_ptr + tl.arange(0, BLOCK), acc)

    out = torch.zeros(16)
    try:
        probe[(1,)](out, 40, BLOCK=16)
    except Exception as exc:  # noqa: BLE001
        if "0-dimensional" in repr(exc):
            return False
        raise
    return bool(out[0] == 3)


if not _interpreter_runs_dynamic_loops():
    pytest.skip(
        "this Triton's interpreter cannot run loops with runtime bounds with this NumPy",
        allow_module_level=True,
    )


@pytest.fixture(autouse=True)
def force_fused(monkeypatch):
    monkeypatch.setenv("DEFORMCONV_GPU_PATH", "fused")


def fused_call(t, a):
    return _fused_gpu.deform_conv2d_fused(
        t["input"], t["offset"], t["weight"], t["bias"], a["stride"], a["padding"], a["dilation"],
        t["mask"],
    )  # fmt: skip


def column_call(t, a):
    return OP(*op_args({**a, **t}))


def leaves(a, dtype, positions=None):
    """Fresh leaves of make_args' tensors in `dtype` (offset and mask in `positions`, default the same)."""
    out = {}
    for k in KEYS:
        if a[k] is None:
            out[k] = None
            continue
        dt = (positions or dtype) if k in ("offset", "mask") else dtype
        out[k] = a[k].detach().clone().to(dt).requires_grad_()
    return out


def forward_backward(call, t, a):
    """Output and the grads of every tensor argument for a fixed grad_output (float64 on return)."""
    y = call(t, a)
    go = torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y.dtype) if y.numel() else None
    tensors = [v for v in t.values() if v is not None]
    grads = (
        torch.autograd.grad(y, tensors, go) if y.numel() else [torch.zeros_like(v) for v in tensors]
    )
    names = [k for k, v in t.items() if v is not None]
    return y.detach().double(), {k: g.double() for k, g in zip(names, grads)}


def rel_err(x, ref):
    return ((x - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item() if ref.numel() else 0.0


FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3}

CONFIGS = {
    "odd_3x3": dict(n=2, c_in=3, h=7, w=6, c_out=5),
    "groups_offset_groups_straddle": dict(c_in=6, c_out=4, groups=2, offset_groups=3, h=5, w=6),
    "offset_group_spans_groups": dict(c_in=6, c_out=3, groups=3, offset_groups=2, h=5, w=5),
    "groups_inside_offset_groups": dict(c_in=8, c_out=8, groups=4, offset_groups=2, h=5, w=6),
    "1x1": dict(c_in=5, c_out=7, kernel=(1, 1), padding=(0, 0), h=5, w=4),
    "5x5_stride2_dil2_no_mask": dict(
        n=1,
        c_in=3,
        c_out=4,
        h=9,
        w=8,
        kernel=(5, 5),
        stride=(2, 2),
        padding=(3, 2),
        dilation=(2, 2),
        with_mask=False,
        with_bias=False,
    ),  # fmt: skip
    "batch1_big_offsets": dict(n=1, c_in=4, c_out=4, h=6, w=7, offset_scale=8.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_oracle_and_column_path(name, dtype):
    """Output against the NumPy oracle; output and all grads against the float64 column path
    (on the same rounded inputs), within 2x the column path's own error in `dtype`."""
    a = make_args(**CONFIGS[name], seed=hash(name) % 1000)
    check_against_columns(a, dtype)


def check_against_columns(a, dtype, positions=None):
    rounded = leaves(a, dtype, positions)
    exact = {
        k: None if v is None else v.detach().double().requires_grad_() for k, v in rounded.items()
    }
    ref_y, ref_g = forward_backward(column_call, exact, a)
    torch.testing.assert_close(ref_y, oracle({**a, **exact}), rtol=1e-10, atol=1e-10)
    y, g = forward_backward(fused_call, leaves(a, dtype, positions), a)
    col_y, col_g = forward_backward(column_call, leaves(a, dtype, positions), a)
    assert y.shape == ref_y.shape
    floor = FLOOR[dtype]
    assert rel_err(y, ref_y) <= 2 * rel_err(col_y, ref_y) + floor, "output"
    for k in ref_g:
        err, col = rel_err(g[k], ref_g[k]), rel_err(col_g[k], ref_g[k])
        assert err <= 2 * col + floor, f"grad of {k}: {err:.3g} vs column path {col:.3g}"


def test_small_blocks_tails_and_straddling_channel_block():
    """16-wide blocks: 2 K blocks with a tail, 2 N blocks with a tail, an M tail, and a channel
    block spanning two offset groups (10 channels each); then two K blocks per weight group."""
    fused_config.OVERRIDES.update(
        {k: dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16) for k in fused_config.KINDS}
    )
    try:
        a = make_args(n=1, c_in=20, c_out=18, h=5, w=4, offset_groups=2, seed=3)
        check_against_columns(a, torch.float32)
        # Two channel blocks per weight group, each group inside one offset group: the
        # forward computes each tap's cell once for both blocks.
        a = make_args(n=1, c_in=64, c_out=16, h=4, w=5, groups=2, offset_groups=2, seed=4)
        check_against_columns(a, torch.float32)
    finally:
        fused_config.OVERRIDES.clear()


# Few pixel tiles and 2 offset groups of 20 channels: with 16-wide blocks, channel splits.
SPLIT_CASE = dict(n=1, c_in=40, c_out=6, h=4, w=5, offset_groups=2, seed=9)


def test_input_side_channel_splits():
    """Few pixel tiles: the input-side kernel splits each offset group's channels (here 3
    splits of 16 of 40 channels, and 2 of 16 + 4 of 20 per offset group) and adds the
    float32 partial grad_offset / grad_mask up."""
    fused_config.OVERRIDES.update({"backward_data": dict(BLOCK_M=16, BLOCK_K=16)})
    try:
        for og, expected in ((1, (3, 16)), (2, (2, 16))):
            assert fused_config.channel_splits(1, 40 // og, 16) == expected
            a = make_args(n=1, c_in=40, c_out=6, h=4, w=5, offset_groups=og, seed=7 + og)
            check_against_columns(a, torch.float32)
    finally:
        fused_config.OVERRIDES.clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_input_side_in_two_passes(dtype):
    """TWO_PASSES: one launch scatters grad_input, a second reduces grad_offset / grad_mask;
    with groups and offset groups, and with channel splits (partials added up)."""
    fused_config.OVERRIDES.update({"backward_data": dict(TWO_PASSES=1)})
    try:
        check_against_columns(make_args(**CONFIGS["groups_offset_groups_straddle"]), dtype)
        fused_config.OVERRIDES["backward_data"].update(BLOCK_M=16, BLOCK_K=16)
        a = make_args(**SPLIT_CASE)
        check_against_columns(a, dtype)
    finally:
        fused_config.OVERRIDES.clear()


def test_forward_nhwc_store(monkeypatch):
    """NHWC_STORE: an NCHW output stored as an NHWC tile (the kernel's output has channel
    stride 1), then copied; same values, NCHW result (and a channels_last input keeps its
    channels_last output)."""
    stored = []  # the channel stride of the forward kernel's output, per launch
    wrap = fused_op.wrap_triton

    class Recording:
        def __init__(self, kernel):
            self.launcher = wrap(kernel)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                stored.append(args[5].stride(1))
                return self.launcher[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(
        fused_op,
        "wrap_triton",
        lambda k: Recording(k) if k is fused_op.fused_forward_kernel else wrap(k),
    )
    a = make_args(**CONFIGS["groups_offset_groups_straddle"])
    ref = fused_call(leaves(a, torch.float32), a).detach()
    fused_config.OVERRIDES.update({"forward": dict(NHWC_STORE=1)})
    try:
        y = fused_call(leaves(a, torch.float32), a)
        assert stored[0] != 1 and stored[1] == 1, stored
        assert y.is_contiguous() and torch.equal(y.detach(), ref)
        check_against_columns(a, torch.float16)
        t = leaves(a, torch.float32)
        t["input"] = t["input"].detach().to(memory_format=torch.channels_last).requires_grad_()
        y = fused_call(t, a)
        assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y.detach(), ref)
    finally:
        fused_config.OVERRIDES.clear()


@pytest.mark.parametrize("wanted", [("weight", "bias"), ("input",), ("offset", "mask")])
def test_gradients_of_some_arguments_only(wanted):
    """Only some arguments need gradients: the backward runs one side (weight side, or the
    input side) and its grads still match the column path's."""
    a = make_args(c_in=5, c_out=4, h=5, w=6, seed=11)
    fused_t = leaves(a, torch.float32)
    col_t = leaves(a, torch.float32)
    for t in (fused_t, col_t):
        for k, v in t.items():
            if v is not None and k not in wanted:
                v.requires_grad_(False)
    go = torch.linspace(-1, 1, 4 * 5 * 6 * 2).reshape(2, 4, 5, 6)
    got = torch.autograd.grad(fused_call(fused_t, a), [fused_t[k] for k in wanted], go)
    ref = torch.autograd.grad(column_call(col_t, a), [col_t[k] for k in wanted], go)
    for k, g, r in zip(wanted, got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=k)


def test_float32_positions_with_float16_data():
    a = make_args(c_in=4, c_out=3, h=5, w=5, offset_scale=3.0, seed=5)
    check_against_columns(a, torch.float16, positions=torch.float32)


def test_gradients_match_oracle_directional_derivative():
    """<grads, v> against a central difference of the float64 NumPy oracle along a random v."""
    a = make_args(n=1, c_in=3, c_out=4, h=5, w=5, groups=1, offset_groups=1, seed=11)
    t = leaves(a, torch.float32)
    y = fused_call(t, a)
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(y, [t[k] for k in KEYS], go)
    gen = torch.Generator().manual_seed(1)
    v = {k: torch.randn(a[k].shape, generator=gen, dtype=torch.float64) for k in KEYS}
    eps = 1e-6
    plus = oracle({**a, **{k: a[k] + eps * v[k] for k in KEYS}})
    minus = oracle({**a, **{k: a[k] - eps * v[k] for k in KEYS}})
    numeric = ((plus - minus) / (2 * eps) * go.double()).sum().item()
    analytic = sum((g.double() * v[k]).sum().item() for g, k in zip(grads, KEYS))
    assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric)), (analytic, numeric)


def test_boundary_and_non_finite_offsets():
    """Samples at exactly -1 and H (zero), just inside the border, and NaN / inf / huge offsets
    (zero, no out-of-bounds read): values against the oracle, grads against the column path."""
    a = make_args(n=2, c_in=3, c_out=2, h=5, w=6, seed=7)
    specials = torch.tensor(
        [0.0, 0.5, -0.5, 1e-3, -1e-3, 5.0, 4.0, float("nan"), float("inf"), -float("inf"), 1e30,
         -1e30, 4.999, -0.999],
        dtype=torch.float64,
    )  # fmt: skip
    off = a["offset"].clone()
    flat = off[0].view(-1)
    flat.copy_(specials.repeat(flat.numel() // specials.numel() + 1)[: flat.numel()])
    a["offset"] = off
    t = leaves(a, torch.float32)
    y, g = forward_backward(fused_call, t, a)
    torch.testing.assert_close(y, oracle(a), rtol=1e-5, atol=1e-5)
    col_y, col_g = forward_backward(column_call, leaves(a, torch.float32), a)
    for k in col_g:
        assert torch.isfinite(g[k]).all(), k
        torch.testing.assert_close(g[k], col_g[k], rtol=1e-4, atol=1e-4, msg=k)


def test_batch_zero():
    a = make_args(n=0, c_in=4, c_out=3)
    y, g = forward_backward(fused_call, leaves(a, torch.float32), a)
    assert y.shape == (0, 3, 7, 6)
    assert g["weight"].abs().sum() == 0 and g["bias"].abs().sum() == 0
    assert g["input"].shape == (0, 4, 7, 6)


def test_channels_last_and_non_contiguous_arguments():
    """channels_last input and output, strided offset / weight / bias, a transposed mask, and an
    expanded (stride 0) grad_output: values against the oracle, grads against the column path."""
    a = make_args(n=2, c_in=4, c_out=5, h=5, w=6, seed=9)

    def views(dtype):
        t = {k: a[k].to(dtype) for k in KEYS}
        t["input"] = t["input"].to(memory_format=torch.channels_last)
        t["offset"] = torch.cat([t["offset"], t["offset"]], dim=1)[:, : t["offset"].shape[1]]
        t["mask"] = t["mask"].transpose(2, 3).contiguous().transpose(2, 3)
        t["weight"] = t["weight"].transpose(2, 3).contiguous().transpose(2, 3)
        t["bias"] = torch.stack([t["bias"], t["bias"]], dim=1)[:, 0]
        assert not any(t[k].is_contiguous() for k in KEYS)
        return {k: v.requires_grad_() for k, v in t.items()}

    t = views(torch.float32)
    y = fused_call(t, a)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.detach().double(), oracle(a), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    ref = views(torch.float64)
    column_call(ref, a).sum().backward()
    for k in KEYS:
        torch.testing.assert_close(t[k].grad.double(), ref[k].grad, rtol=1e-4, atol=1e-4, msg=k)


def test_autocast_follows_the_op_rule():
    """Under CPU autocast (float16): data in float16, offset and mask kept in float32."""
    a = make_args(c_in=4, c_out=3, h=5, w=5, seed=2)
    t = {k: a[k].float() for k in KEYS}
    with torch.autocast("cpu", dtype=torch.float16):
        y = fused_call(t, a)
        ref = OP(*op_args({**a, **t}))
    assert y.dtype == ref.dtype == torch.float16
    torch.testing.assert_close(y, ref, rtol=2e-3, atol=2e-3)


def test_deterministic_mode_runs_the_column_backward():
    a = make_args(c_in=4, c_out=3, h=5, w=5, seed=4)
    with _deterministic():
        assert _fused_gpu.gpu_path(
            a["input"].float(), a["weight"].float(), a["offset"].float()
        ) == ("fused forward, columns backward")
        y, g = forward_backward(fused_call, leaves(a, torch.float32), a)
    col_y, col_g = forward_backward(column_call, leaves(a, torch.float32), a)
    for k in col_g:
        assert torch.equal(g[k], col_g[k]), k


class _deterministic:
    def __enter__(self):
        self.saved = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_deterministic_fixed_point_input_side(monkeypatch, dtype):
    """DETERMINISTIC_FUSED_BACKWARD: in deterministic mode the fused backward runs, grad_input
    summed in int64 fixed point; every grad within 2x the column path's error against float64
    (groups, offset groups; channel splits; two passes), and the same bits when repeated."""
    from deformconv._fused_gpu import selection

    monkeypatch.setattr(selection, "DETERMINISTIC_FUSED_BACKWARD", True)
    a = make_args(**CONFIGS["groups_offset_groups_straddle"])
    with _deterministic():
        path = _fused_gpu.gpu_path(a["input"].float(), a["weight"].float(), a["offset"].float())
        assert path == "fused"
        check_against_columns(a, dtype)
        _, g1 = forward_backward(fused_call, leaves(a, dtype), a)
        _, g2 = forward_backward(fused_call, leaves(a, dtype), a)
        for k in g1:
            assert torch.equal(g1[k], g2[k]), k
        for blocks in (dict(BLOCK_M=16, BLOCK_K=16), dict(TWO_PASSES=1)):
            fused_config.OVERRIDES["backward_data"] = blocks
            try:
                b = make_args(**SPLIT_CASE)
                check_against_columns(b, dtype)
            finally:
                fused_config.OVERRIDES.clear()


# The fused path's CUDA C++ kernels: (selection rule, op, emulation function) per kernel.
CUDA_KERNELS = {
    "forward": ("cuda_forward_applies", "_fused_forward", "fused_forward"),
    "input_side": ("cuda_input_side_applies", "_fused_input_side", "fused_input_side"),
    "weight_side": ("cuda_weight_side_applies", "_fused_weight_grad", "fused_weight_grad"),
}
GLUE_CASES = {
    "groups": (dict(c_in=16, c_out=12, groups=2, offset_groups=2, h=6, w=7), None),
    "no_mask_no_bias": (dict(c_in=8, c_out=8, h=5, w=9, with_mask=False, with_bias=False), None),
    "float32_positions": (dict(n=1, c_in=16, c_out=8, h=7, w=6), torch.float32),
}


@pytest.mark.parametrize("case", list(GLUE_CASES))
@pytest.mark.parametrize("kernel", list(CUDA_KERNELS))
def test_cuda_kernel_glue_with_the_emulated_kernel(monkeypatch, kernel, case):
    """Where a CUDA kernel's selection rule applies, the fused path calls its op; with the op
    replaced by its host emulation (tests/test_fused_*_emulated.py check the kernels
    themselves), the fp16 fused path calls it once per forward+backward and its output and every
    grad stay within 2x the column path's error against float64."""
    import os

    if os.environ.get("DEFORMCONV_SKIP_EMULATION") == "1":
        pytest.skip("DEFORMCONV_SKIP_EMULATION=1")
    from cuda_helpers import load_emulation

    from deformconv._fused_gpu import selection

    rule, op_name, emulated_name = CUDA_KERNELS[kernel]
    emulated_op = getattr(load_emulation(), emulated_name)
    calls = []

    def emulated(*args):
        calls.append(args)
        return emulated_op(*args)

    monkeypatch.setattr(selection, rule, lambda *args: True)
    monkeypatch.setattr(torch.ops.deformconv, op_name, emulated)
    config, positions = GLUE_CASES[case]
    check_against_columns(make_args(**config), torch.float16, positions)
    assert len(calls) == 1


@pytest.mark.parametrize("mode", ["deterministic", "default"])
def test_cuda_input_side_fixed_point_glue(monkeypatch, mode):
    """The CUDA input side in fixed point: in deterministic mode with
    DETERMINISTIC_FUSED_BACKWARD, or in default mode with CUDA_INPUT_SIDE_FIXED_POINT, the
    fused path passes the op a fixed-point scale and combines its sums; with the op replaced by
    its host emulation, every grad stays within 2x the column path's error against float64 and
    repeats bit for bit (grad_input included)."""
    import contextlib
    import os

    if os.environ.get("DEFORMCONV_SKIP_EMULATION") == "1":
        pytest.skip("DEFORMCONV_SKIP_EMULATION=1")
    from cuda_helpers import load_emulation

    from deformconv._fused_gpu import selection

    emulated_op = load_emulation().fused_input_side
    scales = []

    def emulated(*args):
        scales.append(args[8])
        return emulated_op(*args)

    monkeypatch.setattr(selection, "cuda_input_side_applies", lambda *args: True)
    monkeypatch.setattr(torch.ops.deformconv, "_fused_input_side", emulated)
    if mode == "deterministic":
        monkeypatch.setattr(selection, "DETERMINISTIC_FUSED_BACKWARD", True)
    else:
        monkeypatch.setattr(selection, "CUDA_INPUT_SIDE_FIXED_POINT", True)
    a = make_args(**GLUE_CASES["groups"][0])
    with _deterministic() if mode == "deterministic" else contextlib.nullcontext():
        check_against_columns(a, torch.float16)
        _, g1 = forward_backward(fused_call, leaves(a, torch.float16), a)
        _, g2 = forward_backward(fused_call, leaves(a, torch.float16), a)
    for k in g1:
        assert torch.equal(g1[k], g2[k]), k
    assert len(scales) == 3 and all(s is not None and s.dtype == torch.float32 for s in scales)


def test_deterministic_fixed_point_keeps_non_finite_sums(monkeypatch):
    """An inf or NaN in grad_output: grad_input's inf / -inf / NaN elements are the float
    path's (the fixed-point sums hold the finite terms only), the finite ones match it."""
    from deformconv._fused_gpu import selection

    a = make_args(n=1, c_in=4, c_out=4, h=6, w=6, seed=12)

    def grad_input():
        t = leaves(a, torch.float32)
        y = fused_call(t, a)
        go = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        go[0, 0, 1, 1], go[0, 1, 3, 4], go[0, 2, 3, 3] = float("inf"), float("-inf"), float("nan")
        go[0, 3, 5, 0] = float("inf")
        return torch.autograd.grad(y, [t["input"]], go)[0]

    ref = grad_input()
    monkeypatch.setattr(selection, "DETERMINISTIC_FUSED_BACKWARD", True)
    with _deterministic():
        got = grad_input()
    assert torch.isnan(ref).any() and torch.isinf(ref).any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.equal(torch.isposinf(got), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(got[finite], ref[finite], rtol=1e-5, atol=1e-6)


def test_weight_offset_mask_grads_are_bitwise_repeatable():
    a = make_args(c_in=6, c_out=4, groups=2, offset_groups=3, h=5, w=5, seed=8)
    _, g1 = forward_backward(fused_call, leaves(a, torch.float32), a)
    _, g2 = forward_backward(fused_call, leaves(a, torch.float32), a)
    for k in ("weight", "offset", "mask", "bias"):
        assert torch.equal(g1[k], g2[k]), k


def test_double_backward_uses_the_column_path():
    a = make_args(n=1, c_in=2, c_out=2, h=4, w=4, seed=6)

    def second(call):
        t = leaves(a, torch.float64 if call is column_call else torch.float32)
        y = call(t, a)
        (gi,) = torch.autograd.grad(y.square().sum(), [t["input"]], create_graph=True)
        return torch.autograd.grad(gi.sum(), [t["weight"]])[0].double()

    torch.testing.assert_close(second(fused_call), second(column_call), rtol=1e-4, atol=1e-4)


def test_fake_tensors_give_shapes_and_formats():
    from torch._subclasses.fake_tensor import FakeTensorMode

    a = make_args(n=2, c_in=4, c_out=6, h=7, w=6, dtype=torch.float16)
    with FakeTensorMode() as mode:
        t = {k: mode.from_tensor(a[k]) for k in KEYS}
        t["input"] = t["input"].to(memory_format=torch.channels_last)
        y = fused_op.fused_forward(t["input"], t["weight"], t["offset"], t["mask"], t["bias"],
                                   [1, 1], [1, 1], [1, 1])  # fmt: skip
        grads = fused_op.fused_backward(y, t["input"], t["weight"], t["offset"], t["mask"],
                                        t["bias"], [1, 1], [1, 1], [1, 1], True, True,
                                        False)  # fmt: skip
    assert y.shape == (2, 6, 7, 6) and y.dtype == torch.float16
    assert y.is_contiguous(memory_format=torch.channels_last)
    for grad, k in zip(grads, KEYS):
        assert grad.shape == a[k].shape and grad.dtype == a[k].dtype, k


def registered_op_call(t, a):
    """The registered op with its registered autograd: what torch.compile and export trace."""
    return fused_op.fused_forward(
        t["input"], t["weight"], t["offset"], t["mask"], t["bias"],
        list(a["stride"]), list(a["padding"]), list(a["dilation"]),
    )  # fmt: skip


def test_eager_calls_skip_the_dispatcher_and_agree_with_the_registered_op():
    a = make_args(n=2, c_in=6, c_out=4, h=6, w=7, groups=2, offset_groups=3)
    y = fused_call(leaves(a, torch.float32), a)
    assert type(y.grad_fn).__name__ == "_EagerFusedBackward"
    eager_y, eager_grads = forward_backward(fused_call, leaves(a, torch.float32), a)
    op_y, op_grads = forward_backward(registered_op_call, leaves(a, torch.float32), a)
    assert torch.equal(eager_y, op_y)
    for k in op_grads:
        assert torch.equal(eager_grads[k], op_grads[k]), k


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.* is deprecated:FutureWarning")
def test_tracers_see_the_registered_op():
    from torch.fx.experimental.proxy_tensor import make_fx

    a = make_args(n=1, c_in=4, c_out=4, h=5, w=5)
    t = {k: a[k] for k in KEYS}
    graph = make_fx(lambda t: fused_call(t, a))(t)
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert "deformconv._fused_deform_conv2d.default" in targets
    # torch.jit.trace records ops; a kernel launched from Python would be left out.
    traced = torch.jit.trace(lambda *args: fused_call(dict(zip(KEYS, args)), a),
                             tuple(t[k] for k in KEYS))  # fmt: skip
    assert "deformconv::_fused_deform_conv2d" in str(traced.graph)


def test_torch_compile_traces_the_registered_op_without_graph_breaks():
    """torch.compile(fullgraph=True) through deform_conv2d, the fused entry and its selection:
    the captured graph calls the registered op (not the eager function), and forward and
    gradients equal eager's. (Inductor cannot compile the interpreter's kernels; the GPU check
    compiles the real ones.)"""
    from deformconv import deform_conv2d

    a = make_args(n=1, c_in=4, c_out=4, h=5, w=5)
    targets = set()

    def recording_backend(gm, example_inputs):
        targets.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def f(t):
        return deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1,
                             mask=t["mask"])  # fmt: skip

    compiled = torch.compile(f, backend=recording_backend, fullgraph=True)
    got_y, got = forward_backward(lambda t, _: compiled(t), leaves(a, torch.float32), a)
    ref_y, ref = forward_backward(lambda t, _: f(t), leaves(a, torch.float32), a)
    assert any("_fused_deform_conv2d" in t for t in targets), targets
    assert torch.equal(got_y, ref_y)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def _args(dtype=torch.float32):
    a = make_args(dtype=dtype)
    return a["input"], a["weight"], a["offset"], a["mask"]


@pytest.mark.parametrize(
    "value, chosen",
    [("fused", True), (" Fused ", True), ("columns", False), ("auto", False), ("", False)],
)
def test_forced_path_is_respected_and_cpu_never_fuses_automatically(monkeypatch, value, chosen):
    monkeypatch.setenv("DEFORMCONV_GPU_PATH", value)
    assert _fused_gpu.fused_chosen(*_args()) is chosen
    assert _fused_gpu.gpu_path(*_args()) == ("fused" if chosen else "columns")


def test_auto_never_fuses_cpu_tensors_even_when_auto_means_fused(monkeypatch):
    from deformconv._fused_gpu import selection

    monkeypatch.setattr(selection, "AUTO_USES_FUSED", True)
    monkeypatch.setenv("DEFORMCONV_GPU_PATH", "auto")
    assert not _fused_gpu.fused_chosen(*_args())


def test_int64_index_kernels(monkeypatch):
    """DEFORMCONV_FORCE_INT64_INDEX=1: the int64-index builds (used past 2**31 elements)."""
    monkeypatch.setenv("DEFORMCONV_FORCE_INT64_INDEX", "1")
    a = make_args(c_in=6, c_out=4, groups=2, offset_groups=3, h=5, w=6, seed=12)
    check_against_columns(a, torch.float32)


def test_non_tensor_arguments_are_left_to_the_column_op():
    x, w, off, m = _args()
    assert _fused_gpu.fused_chosen(x, w, off, m)
    assert not _fused_gpu.fused_chosen(x, w, None, m)
    assert not _fused_gpu.fused_chosen(x, "weight", off, m)


def test_public_function_and_layers_take_the_fused_path(monkeypatch):
    """deformconv.deform_conv2d (and so the layers) route to the fused op where fused_chosen
    says so, and to the column op where the switch says columns."""
    import deformconv
    from deformconv import DeformConv2dPack, ops

    calls = []
    real = ops.deform_conv2d_fused
    monkeypatch.setattr(ops, "deform_conv2d_fused", lambda *args: calls.append(1) or real(*args))
    a = make_args(c_in=4, c_out=4, h=5, w=6, seed=3, dtype=torch.float32)
    t = {k: a[k] for k in ("input", "offset", "weight", "bias", "mask")}
    out = deformconv.deform_conv2d(
        t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"]
    )
    assert len(calls) == 1
    torch.testing.assert_close(out, column_call(t, a), rtol=1e-4, atol=1e-4)
    DeformConv2dPack(4, 4, 3, padding=1)(t["input"])
    assert len(calls) == 2
    monkeypatch.setenv("DEFORMCONV_GPU_PATH", "columns")
    deformconv.deform_conv2d(t["input"], t["offset"], t["weight"], padding=1)
    assert len(calls) == 2
