# Every CPU path (GEMM backend, 16-bit columns, forward and backward scheme), forced by switches, against float64.
"""The CPU kernels choose, per call, a GEMM backend (``DEFORMCONV_CPU_GEMM=mm|onednn``), for
bfloat16 / float16 whether the columns stay in 16 bits (``DEFORMCONV_CPU_16BIT=native|fp32``),
for float32 compute whether the forward runs fused per-thread tiles
(``DEFORMCONV_CPU_FORWARD=fused|chunked``), and whether the backward does
(``DEFORMCONV_CPU_BACKWARD=fused|chunked``, float32 compute for every dtype but float64). Each
test forces every combination that matters, so all paths run on any CPU, whatever it would
choose."""

import pytest
import torch


from helpers import make_args, op_args, oracle

# (GEMM backend, 16-bit columns, forward scheme, backward scheme); a fused forward applies
# to float32 compute only, a fused backward to every dtype but float64.
PATHS = [
    ("mm", "fp32", "chunked", "chunked"),
    ("onednn", "fp32", "chunked", "chunked"),
    ("onednn", "native", "chunked", "chunked"),
    ("mm", "native", "chunked", "chunked"),
    ("onednn", "fp32", "fused", "fused"),
    ("onednn", "native", "fused", "fused"),
    ("mm", "fp32", "chunked", "fused"),
]
PATH_IDS = ["-".join(p) for p in PATHS]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Max abs error over max abs value of the float64 result at the same (rounded) inputs.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
CONFIGS = {
    "basic": dict(),
    "no_mask_no_bias": dict(with_mask=False, with_bias=False),
    "groups": dict(c_in=8, c_out=6, groups=2),
    "offset_groups": dict(c_in=8, offset_groups=4),
    "groups_and_offset_groups": dict(c_in=8, c_out=4, groups=2, offset_groups=4),
    "strided_dilated": dict(
        kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), h=9, w=8
    ),
    "channels_last": dict(c_in=8, c_out=8, h=9, w=10),
    # Size-1 channel dimensions: their strides are arbitrary in a contiguous tensor.
    "one_output_channel": dict(c_in=8, c_out=1),
    "one_input_channel": dict(c_in=1, c_out=3),
}
TENSORS = ("input", "weight", "offset", "mask", "bias")
GRADS = ("input", "weight", "offset", "mask", "bias")


@pytest.fixture
def use_path(monkeypatch):
    """Force a CPU path for the rest of the test: use_path("onednn", "native", "fused", "fused")."""

    def use(gemm, columns_16bit, forward="chunked", backward="chunked"):
        monkeypatch.setenv("DEFORMCONV_CPU_GEMM", gemm)
        monkeypatch.setenv("DEFORMCONV_CPU_16BIT", columns_16bit)
        monkeypatch.setenv("DEFORMCONV_CPU_FORWARD", forward)
        monkeypatch.setenv("DEFORMCONV_CPU_BACKWARD", backward)

    return use


def cast(args, dtype, channels_last=False):
    """The tensors of a make_args dict in `dtype` (input channels-last if asked)."""
    out = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in args.items()}
    if channels_last:
        out["input"] = out["input"].contiguous(memory_format=torch.channels_last)
    return out


def forward_backward(args, seed=1):
    """[output, grad_input, grad_weight, grad_offset, grad_mask, grad_bias] of one call."""
    out = torch.ops.deformconv.deform_conv2d(*op_args(args))
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    grads = torch.ops.deformconv._deform_conv2d_backward(grad, *op_args(args))
    return [out, *grads]


def assert_close_scaled(ours, ref, tol, what):
    for name, a, b in zip(("output",) + GRADS, ours, ref):
        if b.numel() == 0:
            assert a.numel() == 0, f"{what}: {name}"
            continue
        err = (a.double() - b.double()).abs().max().item()
        scale = b.double().abs().max().item() + 1e-6
        assert err / scale < tol, f"{what}: {name} error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_path_matches_float64_at_rounded_inputs(path, dtype, config, use_path):
    """Forward and all gradients against the float64 op (mm path) at the same rounded inputs."""
    args = make_args(**CONFIGS[config])
    low = cast(args, dtype, channels_last=config == "channels_last")
    use_path("mm", "fp32")
    ref = forward_backward(cast(low, torch.float64))
    use_path(*path)
    ours = forward_backward(low)
    for t in ours:
        assert t.dtype == dtype
    if config == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
        assert ours[1].is_contiguous(memory_format=torch.channels_last)
    assert_close_scaled(ours, ref, TOLERANCE[dtype], f"{path} {dtype} {config}")


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_path_forward_matches_numpy_oracle(path, dtype, use_path):
    args = make_args(c_in=8, c_out=4, groups=2, offset_groups=2, offset_scale=3.0)
    low = cast(args, dtype)
    use_path(*path)
    out = torch.ops.deformconv.deform_conv2d(*op_args(low))
    expected = oracle(low)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_paths_agree_with_each_other(dtype, use_path):
    """All paths give the same results within the dtype's rounding, on a multi-chunk shape."""
    args = cast(make_args(n=3, c_in=16, c_out=12, h=11, w=13, groups=2, offset_groups=2), dtype)
    results = {}
    for path in PATHS:
        use_path(*path)
        results[path] = forward_backward(args)
    tol = 1e-5 if dtype == torch.float32 else TOLERANCE[dtype]
    first = results[PATHS[0]]
    for path, res in results.items():
        assert_close_scaled(res, first, tol, f"{path} vs {PATHS[0]} in {dtype}")


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_remainder_chunks_are_reproducible_and_match_one_chunk(path, dtype, use_path, monkeypatch):
    """A 1 MiB workspace splits 5*21*23 pixels into chunks whose last one is partial and not a
    multiple of the oneDNN image width; results repeat bitwise and match a single chunk."""
    args = cast(make_args(n=5, c_in=32, c_out=8, h=21, w=23, groups=2, offset_groups=2), dtype)
    use_path(*path)
    whole = forward_backward(args)
    monkeypatch.setenv("DEFORMCONV_WORKSPACE_MB", "1")
    chunked = forward_backward(args)
    again = forward_backward(args)
    for name, a, b in zip(("output",) + GRADS, chunked, again):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
    # grad_weight sums its chunks in float32 after 16-bit GEMMs: one more rounding per chunk.
    tol = 1e-5 if dtype == torch.float32 else TOLERANCE[dtype]
    assert_close_scaled(chunked, whole, tol, f"chunked vs whole {path} {dtype}")


def test_path_query_names_the_forced_path(use_path):
    query = torch.ops.deformconv._cpu_path
    use_path("onednn", "native")
    assert query(torch.float32).startswith("gemm=onednn columns=float32")
    assert query(torch.bfloat16).startswith("gemm=onednn columns=bfloat16")
    assert query(torch.float16).startswith("gemm=onednn columns=float16")
    assert query(torch.float64).startswith("gemm=mm columns=float64")  # oneDNN has no float64
    use_path("mm", "fp32")
    assert query(torch.float32).startswith("gemm=mm columns=float32")
    assert query(torch.bfloat16).startswith("gemm=mm columns=float32 (16-bit input")
    assert "forward=chunked" in query(torch.float32)
    use_path("mm", "fp32", "fused")
    assert "forward=fused backward=" in query(torch.float32)
    assert "forward=fused backward=" in query(torch.bfloat16)  # computed in float32
    assert "forward=chunked" in query(torch.float64)  # the fused forward is float32 only
    use_path("onednn", "native", "fused")
    # 16-bit columns: fused with ATen's 16-bit brgemm where the CPU has the units it needs.
    caps = torch._C._cpu._get_cpu_capability()
    bf16_units = caps.get("avx512_bf16") or caps.get("amx_bf16")
    expected = "forward=fused" if bf16_units else "forward=chunked"
    assert expected in query(torch.bfloat16)
    expected = "forward=fused" if caps.get("amx_fp16") else "forward=chunked"
    assert expected in query(torch.float16)
    assert "backward=chunked" in query(torch.float32)
    use_path("onednn", "native", "chunked", "fused")
    assert "backward=fused loops=" in query(torch.float32)
    # Native 16-bit columns: the fused backward needs the same units as the fused forward.
    expected = "backward=fused loops=" if bf16_units else "backward=chunked"
    assert expected in query(torch.bfloat16)
    assert "backward=chunked" in query(torch.float64)  # the fused backward is not float64


def test_automatic_choice_follows_the_cpu(monkeypatch):
    """Unset switches: oneDNN GEMMs when ATen has oneDNN and the CPU AVX-512; 16-bit columns
    only where the CPU also has 16-bit dot-product units; AVX-512 loops where it has x86-64-v4."""
    monkeypatch.delenv("DEFORMCONV_CPU_GEMM", raising=False)
    monkeypatch.delenv("DEFORMCONV_CPU_16BIT", raising=False)
    monkeypatch.delenv("DEFORMCONV_CPU_FORWARD", raising=False)
    monkeypatch.delenv("DEFORMCONV_CPU_BACKWARD", raising=False)
    caps = torch._C._cpu._get_cpu_capability()
    avx512 = all(caps.get(f) for f in ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"))
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and avx512
    query = torch.ops.deformconv._cpu_path
    assert query(torch.float32).startswith("gemm=onednn" if onednn else "gemm=mm")
    native_bf16 = onednn and (caps.get("avx512_bf16") or caps.get("amx_bf16"))
    native_fp16 = onednn and (caps.get("avx512_fp16") or caps.get("amx_fp16"))
    assert ("columns=bfloat16" in query(torch.bfloat16)) == bool(native_bf16)
    assert ("columns=float16" in query(torch.float16)) == bool(native_fp16)
    # Fused forward with oneDNN (AVX-512) CPUs: float32 compute, or native bfloat16 where the
    # CPU has the units ATen's 16-bit brgemm needs (they come with native bfloat16).
    assert ("forward=fused" in query(torch.float32)) == onednn
    assert ("forward=fused" in query(torch.bfloat16)) == onednn
    # Native float16 tiles (AMX-FP16) have run on no CPU yet: automatically never fused.
    assert ("forward=fused" in query(torch.float16)) == (onednn and not native_fp16)
    # Fused backward where the forward is fused; never float64.
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert ("backward=fused" in query(dtype)) == ("forward=fused" in query(dtype))
    assert "backward=chunked" in query(torch.float64)
    v4 = avx512 and caps.get("avx512_cd")
    if caps.get("architecture") == "x86_64":
        expected = "avx512" if v4 else ("avx2" if caps.get("avx2") and caps.get("fma3") else "")
        if expected:
            assert query(torch.float32).endswith("loops=" + expected)


@pytest.mark.parametrize(
    "name,value,dtype",
    [
        ("DEFORMCONV_CPU_GEMM", "mkl", torch.bfloat16),
        ("DEFORMCONV_CPU_16BIT", "bf16", torch.bfloat16),
        ("DEFORMCONV_CPU_FORWARD", "tiled", torch.float32),
        ("DEFORMCONV_CPU_BACKWARD", "tiled", torch.float32),
    ],
)
def test_bad_path_switch_is_reported(name, value, dtype, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=f"{name} is not valid: got '{value}'"):
        forward_backward(cast(make_args(), dtype))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_fused_forward_is_bitwise_independent_of_thread_count(channels_last, use_path):
    """Tiles are fixed by the shape, not by the threads: 1 and 2 threads give the same bits."""
    args = cast(make_args(n=3, c_in=16, c_out=12, h=17, w=19, groups=2), torch.float32)
    if channels_last:
        args["input"] = args["input"].contiguous(memory_format=torch.channels_last)
    use_path("onednn", "fp32", "fused")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.deformconv.deform_conv2d(*op_args(args))
        torch.set_num_threads(2)
        two = torch.ops.deformconv.deform_conv2d(*op_args(args))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert one.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


@pytest.mark.parametrize("columns", ["fp32", "native"])
@pytest.mark.parametrize(
    "n,threads",
    [(3, 1), (3, 2), (3, 3), (1, 3), (5, 2)],
    ids=["3img-1thread", "3img-2threads", "3img-3threads", "1img-3threads", "5img-2threads"],
)
def test_fused_backward_shared_images_and_repeats(n, threads, columns, use_path):
    """The fused backward splits the pixels into one range of tiles per thread; an image two
    ranges share is scattered into private copies that are summed afterwards. With ranges that
    start and end inside images (and one image split three ways), the gradients repeat bitwise
    and match the chunked backward, in float32 and in bfloat16 (16-bit brgemm where the CPU
    has the units)."""
    dtype = torch.float32 if columns == "fp32" else torch.bfloat16
    # 32 channels, 3x3: 227-pixel tiles, so 1-5 images of 21x23 pixels hold 3-11 tiles.
    args = cast(make_args(n=n, c_in=32, c_out=8, h=21, w=23, offset_groups=2), dtype)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        use_path("onednn", columns, "fused", "fused")
        fused = forward_backward(args)
        again = forward_backward(args)
        use_path("onednn", columns, "chunked", "chunked")
        chunked = forward_backward(args)
    finally:
        torch.set_num_threads(old)
    for name, a, b in zip(("output",) + GRADS, fused, again):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
    tol = 1e-5 if dtype == torch.float32 else TOLERANCE[dtype]
    assert_close_scaled(fused, chunked, tol, f"fused vs chunked, {columns}, {threads} threads")


def test_forced_16bit_tiles_fall_back_without_onednn(use_path):
    """ATen's 16-bit brgemm raises where oneDNN is disabled: forced 16-bit fused tiles then run
    chunked instead of failing."""
    args = cast(make_args(), torch.bfloat16)
    use_path("mm", "native", "fused", "fused")
    enabled = torch.backends.mkldnn.enabled
    try:
        # Not torch.backends.mkldnn.flags(): it also sets oneDNN's TF32 switch, which warns.
        torch.backends.mkldnn.enabled = False
        path = torch.ops.deformconv._cpu_path(torch.bfloat16)
        results = forward_backward(args)
    finally:
        torch.backends.mkldnn.enabled = enabled
    assert "forward=chunked backward=chunked" in path
    assert all(torch.isfinite(t).all() for t in results)
