# The fused GPU path: selection switch, optional triton, and its kernels under Triton's interpreter (child process).
"""CI has no GPU. The kernel tests (tests/fused_gpu_interpreted.py) run in a child process with
TRITON_INTERPRET=1 set before triton is imported (Triton reads it then), so the variable never
reaches other tests of this process. bfloat16 is tested on a GPU only (the interpreter gets it
wrong): benchmarks/fused_gpu_check.py.
"""

import sys

import pytest
import torch
from helpers import REPO, make_args, run_python, run_pythons

import deformconv
from deformconv import _fused_gpu

INTERPRETED_TESTS = REPO / "tests" / "fused_gpu_interpreted.py"


# The interpreter runs on one core: its tests run in this many children at once, each taking
# every SHARDS-th test (neighbours in the file, often the same test's dtypes, land apart).
SHARDS = 2


def _interpreted_shard(index):
    return (
        "import os, sys\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import pytest\n"
        "class Shard:\n"
        "    def pytest_collection_modifyitems(self, config, items):\n"
        f"        keep = items[{index}::{SHARDS}]\n"
        "        config.hook.pytest_deselected(items=[t for t in items if t not in keep])\n"
        "        items[:] = keep\n"
        f"sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', {str(INTERPRETED_TESTS)!r}],"
        " plugins=[Shard()]))\n"
    )


def test_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    shards = [["-c", _interpreted_shard(i)] for i in range(SHARDS)]
    procs = run_pythons(shards, cwd=REPO / "tests", timeout=600)
    if any("cannot run loops with runtime bounds" in p.stdout for p in procs):  # (nothing ran)
        pytest.skip(
            "this Triton's interpreter cannot run loops with runtime bounds with this NumPy"
        )
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-3000:]


@pytest.mark.parametrize("base", [1, 7, 132, 525, 1024, 5000])
@pytest.mark.parametrize("channels, block_k", [(1, 16), (16, 16), (40, 16), (256, 64), (512, 64)])
def test_channel_splits_cover_every_channel_once(base, channels, block_k):
    """Input-side splits: whole blocks, none empty, all channels covered; as many splits as
    the target program count asks for (at most one per block), none once the pixel tiles
    alone reach it."""
    from deformconv._fused_gpu import config

    splits, per = config.channel_splits(base, channels, block_k)
    blocks = -(-channels // block_k)
    wanted = min(blocks, -(-config.TARGET_PROGRAMS // base))
    assert per % block_k == 0 and 1 <= splits <= wanted
    assert (splits - 1) * per < channels <= splits * per
    assert (per // block_k - 1) * wanted < blocks  # the fewest blocks per split for `wanted`
    if base >= config.TARGET_PROGRAMS:
        assert splits == 1


def _args(dtype=torch.float32):
    a = make_args(dtype=dtype)
    return a["input"], a["weight"], a["offset"], a["mask"]


def test_bad_switch_value_raises_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DEFORMCONV_GPU_PATH", "fast")
    with pytest.raises(ValueError, match="DEFORMCONV_GPU_PATH must be one of auto, fused, columns"):
        _fused_gpu.fused_chosen(*_args())


@pytest.fixture(autouse=True)
def no_switch(monkeypatch):
    monkeypatch.delenv("DEFORMCONV_GPU_PATH", raising=False)


def test_cpu_tensors_never_fuse_outside_the_interpreter(monkeypatch):
    for value in ("auto", "fused", "columns"):
        monkeypatch.setenv("DEFORMCONV_GPU_PATH", value)
        assert not _fused_gpu.fused_chosen(*_args())
        assert _fused_gpu.gpu_path(*_args()) == "columns"


def test_uncovered_calls_stay_on_the_column_path():
    assert not _fused_gpu.fused_chosen(*_args(torch.float64))
    x, w, off, m = _args(torch.float32)
    assert not _fused_gpu.fused_chosen(x, w.double(), off, m)  # weight not in the data dtype
    assert not _fused_gpu.fused_chosen(x.half(), w.half(), off.double(), m)
    assert not _fused_gpu.fused_chosen(x, w, off.to("meta"), m)  # another device


class _CudaLike:
    """Stands in for a CUDA tensor in the input-side rule (no GPU here)."""

    is_cuda = True
    device = torch.device("cuda", 0)

    def __init__(self, dtype):
        self.dtype = dtype


def test_cuda_input_side_rule(monkeypatch):
    """selection.cuda_input_side_applies: only with CUDA_INPUT_SIDE, for 16-bit data with
    8-channel groups and offset groups, <= 9 taps, <= 512 output channels per group, 158 KiB of
    shared memory and the CUDA kernel registered."""
    from deformconv._fused_gpu import selection

    props = type("Props", (), {"shared_memory_per_block_optin": 227 * 1024})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(selection, "_cuda_kernel_registered", lambda name: True)
    half = _CudaLike(torch.float16)
    ok = (half, 64, 32, 128, 9)
    assert not selection.cuda_input_side_applies(*ok)  # off by default
    monkeypatch.setattr(selection, "CUDA_INPUT_SIDE", True)
    assert selection.cuda_input_side_applies(*ok)
    assert selection.cuda_input_side_applies(_CudaLike(torch.bfloat16), 8, 8, 512, 1)
    for bad in (
        (_CudaLike(torch.float32), 64, 32, 128, 9),
        (half, 12, 32, 128, 9),
        (half, 64, 4, 128, 9),
        (half, 64, 32, 513, 9),
        (half, 64, 32, 128, 25),
        (torch.zeros(1, dtype=torch.float16), 64, 32, 128, 9),  # a CPU tensor
    ):
        assert not selection.cuda_input_side_applies(*bad), bad[1:]
    monkeypatch.setattr(props, "shared_memory_per_block_optin", 99 * 1024)
    assert not selection.cuda_input_side_applies(*ok)
    monkeypatch.setattr(props, "shared_memory_per_block_optin", 227 * 1024)
    monkeypatch.setattr(selection, "_cuda_kernel_registered", lambda name: False)
    assert not selection.cuda_input_side_applies(*ok)


def test_fixed_point_scale():
    """fixed_point.fixed_point_scale: the largest power of two S with B * terms * S <= 2**62
    (B = max|grad_output| * max over (tap, c) of sum over co of |W| * max|mask|, finite
    elements only), kept within [2**-100, 2**100]; weights whose column sums overflow float32
    still give a bound."""
    from deformconv._fused_gpu.fixed_point import fixed_point_scale

    go = torch.tensor([[[[0.5, -3.0]]], [[[float("inf"), 1.0]]]])  # [2, 1, 1, 2]
    w = torch.tensor([[[[2.0]], [[-1.0]]], [[[4.0]], [[float("nan")]]]])  # [2, 2, 1, 1], 2 groups
    mask = torch.tensor([0.25, 0.5]).reshape(1, 1, 1, 2)
    s = fixed_point_scale(go, w, mask, 2, 12)
    bound = 3.0 * 4.0 * 0.5  # |go| 3, group 1's column sum 4 (NaN left out), mask 0.5
    assert s.dtype == torch.float32 and s.numel() == 1
    assert bound * 12 * s.item() <= 2.0**62 < 2 * bound * 12 * s.item()
    assert float(torch.log2(s)) == int(torch.log2(s))  # a power of two
    huge = torch.full((512, 1, 3, 3), 3e38, dtype=torch.bfloat16)  # column sums past float32
    s = fixed_point_scale(torch.full((1, 1, 2, 2), 3e38), huge, None, 1, 36).item()
    assert s == 2.0**-100
    assert fixed_point_scale(go[:0], w, None, 2, 12).item() == 2.0**100  # no terms


@pytest.mark.parametrize(
    "rule, flag, op",
    [
        ("cuda_forward_applies", "CUDA_FORWARD", "deformconv::_fused_forward"),
        ("cuda_weight_side_applies", "CUDA_WEIGHT_SIDE", "deformconv::_fused_weight_grad"),
    ],
)
def test_cuda_forward_and_weight_side_rules(monkeypatch, rule, flag, op):
    """selection.cuda_forward_applies / cuda_weight_side_applies: only with their switch, for
    16-bit CUDA data with 8-channel groups and offset groups and the CUDA kernel registered."""
    from deformconv._fused_gpu import selection

    applies = getattr(selection, rule)
    registered = {op: True}
    monkeypatch.setattr(selection, "_cuda_kernel_registered", lambda name: registered[name])
    half = _CudaLike(torch.float16)
    assert not applies(half, 64, 32)  # off by default
    monkeypatch.setattr(selection, flag, True)
    assert applies(half, 64, 32)
    assert applies(_CudaLike(torch.bfloat16), 8, 8)
    for bad in (
        (_CudaLike(torch.float32), 64, 32),
        (half, 12, 32),
        (half, 64, 4),
        (torch.zeros(1, dtype=torch.float16), 64, 32),  # a CPU tensor
    ):
        assert not applies(*bad), bad[1:]
    registered[op] = False
    assert not applies(half, 64, 32)


def test_package_imports_and_stays_on_columns_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import os; os.environ['DEFORMCONV_GPU_PATH'] = 'fused'\n"
        "os.environ['TRITON_INTERPRET'] = '1'  # CPU tensors could fuse, but for triton\n"
        "import torch, deformconv\n"
        "from deformconv import _fused_gpu\n"
        "x = torch.randn(1, 2, 4, 4); w = torch.randn(2, 2, 3, 3); off = torch.randn(1, 18, 4, 4)\n"
        "assert not _fused_gpu.fused_chosen(x, w, off, None)\n"
        "assert _fused_gpu.gpu_path(x, w, off) == 'columns'\n"
        "try:\n"
        "    import deformconv._fused_gpu.op\n"
        "    raise SystemExit('the kernels imported without triton')\n"
        "except ImportError:\n"
        "    pass\n"
        "print(deformconv.deform_conv2d(x, off, w, padding=1).shape)\n"
    )
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 2, 4, 4])" in proc.stdout
    assert deformconv.HAS_OPS


def test_importing_the_package_does_not_import_triton():
    code = "import sys, deformconv, deformconv._fused_gpu; print('triton' in sys.modules)"
    proc = run_python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_triton_ops_expose_their_kernels_to_the_compiler():
    """Both ops are triton_op with literal wrap_triton launches, so torch.compile / export find
    the kernels (compiled kernels: this process does not run under the interpreter)."""
    pytest.importorskip("triton")
    from torch._library.triton import get_triton_kernels_for_op

    from deformconv._fused_gpu import kernels, op  # noqa: F401  (registers the ops)

    if kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 in this process: the interpreter's kernels are not listed")
    fwd = get_triton_kernels_for_op("deformconv::_fused_deform_conv2d")
    bwd = get_triton_kernels_for_op("deformconv::_fused_deform_conv2d_backward")
    assert fwd == [kernels.fused_forward_kernel]
    assert set(bwd) == {kernels.fused_backward_data_kernel, kernels.fused_backward_weight_kernel}


def test_compiler_sees_each_kernel_write_only_its_outputs():
    """torch.compile's analysis of the kernels' IR (tests/fused_gpu_writes.py, a child process)
    must find them writing their outputs alone: an input it believes written (offset, mask)
    makes compiling a graph that differentiates through the op fail."""
    pytest.importorskip("triton")
    proc = run_python([str(REPO / "tests" / "fused_gpu_writes.py")], timeout=300)
    if proc.returncode == 2:
        pytest.skip("this torch has no analysis of which tensors a Triton kernel writes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:3] == [
        "fused_backward_data_kernel: gmsk_ptr goff_ptr gx_ptr gxi_ptr",
        "fused_backward_weight_kernel: part_ptr",
        "fused_forward_kernel: out_ptr",
    ], proc.stdout


def _ptx_tool():
    """benchmarks/fused_gpu_ptx.py, which compiles the fused kernels ahead of time."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import fused_gpu_ptx
    finally:
        sys.path.pop(0)
    return fused_gpu_ptx


@pytest.mark.parametrize(
    "kind, dtype, capability",
    [
        ("forward", torch.float16, 90),
        ("forward", torch.bfloat16, 80),
        ("forward", torch.float32, 90),
        ("backward_data", torch.bfloat16, 90),
        ("backward_data", torch.float32, 80),
        ("backward_weight", torch.float16, 80),
        ("backward_weight", torch.float32, 90),
    ],
)
def test_kernels_compile_for_the_gpu(kind, dtype, capability):
    """The interpreter accepts code the GPU compiler rejects (block dims < 16, types, constexpr
    misuse): compile the real kernels for sm_80 / sm_90 ahead of time, without a GPU."""
    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no ahead-of-time compile API")
    from deformconv._fused_gpu import kernels

    if kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 in this process")
    tool = _ptx_tool()
    # The general build (no specialization: every integer a plain argument, the loops over
    # offset groups), as a call with odd sizes and strides compiles it, then the int64 build.
    compiled, _ = tool.compile_for_sm(kind, dtype, capability, specialize=False)
    assert compiled.asm["cubin"]
    # The build of a contiguous call with one offset group (no offset-group loops).
    compiled, _ = tool.compile_for_sm(kind, dtype, capability, specialize=True)
    assert compiled.asm["cubin"]
    if kind == "forward" and dtype == torch.float16:
        compiled, _ = tool.compile_for_sm(kind, dtype, capability, idx64=True, specialize=False)
        assert compiled.asm["cubin"]


def test_ptx_report_of_a_specialized_build():
    """benchmarks/fused_gpu_ptx.py on the input-side kernel (sm_90, fp16): ptxas's register
    count, and vector float32 atomics for grad_input, as the specialized build has."""
    pytest.importorskip("triton")
    from deformconv._fused_gpu import kernels

    if kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 in this process")
    r = _ptx_tool().report("backward_data", torch.float16, 90)
    assert 0 < r["registers"] <= 255 and r["spill_bytes"] is not None
    assert any(
        op.startswith("atom.global") and op.endswith(".v4.f32") for op in r["memory_instructions"]
    )


def test_host_overhead_benchmark_runs_the_fused_path():
    """benchmarks/bench_fused_host_overhead.py (which checks that each timed call took the
    path it names) at one call per block."""
    pytest.importorskip("triton")
    script = REPO / "benchmarks" / "bench_fused_host_overhead.py"
    proc = run_python([str(script), "--reps", "1", "--blocks", "1"], cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["fused", "columns"], proc.stdout
