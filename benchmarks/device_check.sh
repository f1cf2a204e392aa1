#!/usr/bin/env bash
# One-shot check on a lent GPU machine (no network): build, CUDA tests, GPU timings vs torchvision and cuDNN, compute-sanitizer; short table last; <= 8 min.
#
# Usage (repository root or anywhere):  bash benchmarks/device_check.sh
# Results go to $OUT (default /tmp/deformconv_device_check): gpu_bench.json, extras.json,
# dcn_family_gpu.json and logs.tgz (every step's log, the profile and the short tables; few files, since a device run
# returns at most 8). Every step runs under
# `timeout`, capped by what is left of an 8-minute deadline; a failing step does not stop
# the later ones (except a failed build), and the summary at the end lists each step's
# exit status. Environment: TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (16),
# CUDA_HOME (/usr/local/cuda), DEADLINE_S (480), FUSED_BUDGET_S (200: the fused check's own budget),
# FUSED_TESTS (1; 0 skips the fused part's pytest run), FUSED_SECTIONS (fused_gpu_check.py's
# --sections; default all), FAMILY_BUDGET_S (60: the DCNv3/DCNv4 check's own budget), PARTS
# (default "family fused cpu gpu", run in that order: family = the DCNv3/DCNv4 CUDA kernels
# (correctness against the CPU op, determinism, timings at InternImage-T's stages, memcheck);
# fused = the fused GPU kernels (tests, check, an Nsight Compute profile) and the ResNet-50 training step; cpu = the CPU tests and timings on this host's
# CPU, which on H100/H200 servers has AMX; gpu = the column path's CUDA tests, timings and
# sanitizer), e.g. PARTS="cpu" bash benchmarks/device_check.sh. All three do not fit the
# deadline together: the later ones are then skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-/tmp/deformconv_device_check}"
LOG="$OUT/logs"
mkdir -p "$LOG"
# The benchmark scripts run as files: they import the package built in place here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export FORCE_CUDA=1
export PATH="$CUDA_HOME/bin:$PATH"
# cuBLAS must be configured deterministically before its first use for
# torch.use_deterministic_algorithms(True) (the determinism tests and timings).
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export PYTHONUNBUFFERED=1
# The system compiler, the one torch was built with: these machines' default CXX (a wrapper
# around its own g++) links libstdc++ statically, and every C++ error then kills the
# process (setup.py refuses such a build).
if [[ -x /usr/bin/g++ && -x /usr/bin/gcc ]]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc
fi
PARTS="${PARTS:-family fused cpu gpu}"
part() { [[ " $PARTS " == *" $1 "* ]]; }
# The host-emulation tests (tests/test_cuda_emulated.py) are for GPU-less CI; the real kernels run here.
export DEFORMCONV_SKIP_EMULATION=1
DEADLINE_S="${DEADLINE_S:-480}"
START=$SECONDS
SUMMARY=()

# step NAME MAX_SECONDS CMD...: runs CMD with output in $LOG/NAME.log, prints its tail.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE_S - (SECONDS - START) - 15))
  if ((left < 10)); then
    SUMMARY+=("$name|skipped (deadline)|0")
    echo "== $name: skipped, deadline reached"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1 || rc=$?
  local dt=$((SECONDS - t0))
  tail -n "${TAIL:-25}" "$LOG/$name.log" || true
  local what="ok"
  ((rc == 124 || rc == 137)) && what="TIMEOUT"
  ((rc != 0 && rc != 124 && rc != 137)) && what="FAILED rc=$rc"
  SUMMARY+=("$name|$what|$dt")
  echo "== $name: $what (${dt}s)"
  return 0
}

summary() {
  echo
  echo "================ deformconv device check summary ($((SECONDS - START))s) ================"
  [[ -f "$LOG/gpu.txt" ]] && cat "$LOG/gpu.txt"
  printf '| %-12s | %-20s | %6s |\n' step result seconds
  printf '|--------------|----------------------|--------|\n'
  local row
  for row in "${SUMMARY[@]}"; do
    IFS='|' read -r a b c <<<"$row"
    printf '| %-12s | %-20s | %6s |\n' "$a" "$b" "$c"
  done
  if [[ -f "$LOG/tests.log" ]]; then
    echo
    grep -E "passed|failed|error" "$LOG/tests.log" | tail -n 3 || true
  fi
  if [[ -f "$LOG/extras.md" ]]; then
    echo
    cat "$LOG/extras.md"
  fi
  if [[ -f "$LOG/bench.log" ]]; then
    echo
    # The benchmark prints its markdown table last.
    awk '/^\|/ {print}' "$LOG/bench.log" | tail -n 40
  fi
  # Few files come back from a device run: the logs travel as one archive.
  tar -C "$OUT" -czf "$OUT/logs.tgz" logs && rm -rf "$LOG"
}
trap summary EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$LOG/gpu.txt" 2>&1 || true
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])" >>"$LOG/gpu.txt" 2>&1 || true
cat "$LOG/gpu.txt"

# 1. Build in place (CPU + CUDA kernels), no network needed.
TAIL=15 step build 300 python3 setup.py build_ext --inplace
if [[ "${SUMMARY[-1]}" != build\|ok\|* ]]; then
  echo "build failed: see $LOG/build.log"
  exit 1
fi
step import 60 python3 -c "
import torch, deformconv
print('CUDA kernels registered:', deformconv.has_cuda_kernels())
assert deformconv.has_cuda_kernels() and torch.cuda.is_available()
x = torch.randn(1, 4, 5, 5, device='cuda'); w = torch.randn(3, 4, 3, 3, device='cuda')
off = torch.randn(1, 18, 5, 5, device='cuda')
print(deformconv.deform_conv2d(x, off, w, padding=1).shape)
"

# 1b. The DCNv3 / DCNv4 CUDA kernels: benchmarks/dcn_family_gpu_check.py (both ops against
#     float64 (grid_sample formulation + autograd), every dtype, bf16 backward included; deterministic mode bitwise;
#     forward and forward+backward at InternImage-T's stages, batch 64, fp16 / bf16, against the
#     grid_sample formulation and a depthwise 3x3 conv) -> $OUT/dcn_family_gpu.json; then
#     memcheck on its correctness section (never run on a GPU before).
if part family; then
  TAIL=30 step family $((${FAMILY_BUDGET_S:-60} + 40)) python3 benchmarks/dcn_family_gpu_check.py \
    --out "$OUT/dcn_family_gpu.json" --budget-s "${FAMILY_BUDGET_S:-60}"
  if command -v compute-sanitizer >/dev/null; then
    TAIL=8 step family_memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer \
      --tool memcheck --error-exitcode 9 python3 benchmarks/dcn_family_gpu_check.py \
      --sections correct --dtypes float32,bfloat16 --budget-s 30 --out "$LOG/family_memcheck.json"
  fi
fi  # part family

# 2. The fused Triton path (opt-in: DEFORMCONV_GPU_PATH=fused): its tests (kernels under Triton's
#    interpreter on CPU, ahead-of-time compiles, selection) and the GPU check on the real kernels
#    (correctness in fp32/fp16/bf16, torchvision parity, autotune, timings, memory) ->
#    $OUT/fused_gpu.json. Both run even if the first fails; the step fails if either does.
if part fused; then
  # The interpreter test is CI's (CPU); here the real kernels run.
  # FUSED_TESTS=0 leaves out the pytest part (CPU-side tests CI also runs: saves ~30 s).
  # The step's limit follows the check's budget (a section started before it may run on).
  TAIL=40 step fused $((${FUSED_BUDGET_S:-200} + 60)) bash -c 't=0; if [[ "${FUSED_TESTS:-1}" != 0 ]]; then
python3 -m pytest -q -rfE -k "not interpreter" tests/test_fused_gpu.py; t=$?; fi
python3 benchmarks/fused_gpu_check.py --out "$1/fused_gpu.json" --budget-s "${FUSED_BUDGET_S:-200}" \
  ${FUSED_SECTIONS:+--sections "$FUSED_SECTIONS"}; b=$?
exit $((t != 0 || b != 0))' fused "$OUT"
  # Where the fused kernels' time goes: Nsight Compute on one forward+backward at r50-c3 in
  # fp16 with the CUDA kernels (its three launches: implicit_gemm_forward_kernel,
  # implicit_gemm_weight_kernel, window_input_side_kernel), a few sections each.
  if command -v ncu >/dev/null; then
    TAIL=80 step fused_ncu 150 ncu --kernel-name "regex:fused_|window_input_side|implicit_gemm_" --launch-count 3 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
      --section WarpStateStats --section LaunchStats \
      python3 benchmarks/fused_gpu_check.py --out "$LOG/fused_once.json" --sections once \
      --shapes r50-c3 --dtypes float16 --cuda-kernels
  fi
  # The ResNet-50 training step, plain against layer2-4 deformable on each GPU path.
  TAIL=12 step resnet50 180 python3 benchmarks/bench_resnet50_step.py --json "$OUT/resnet50_step.json"
  # compute-sanitizer memcheck and racecheck (shared memory of the tl.dot operands, the
  # software pipelines and the CUDA kernels' buffers) on the fused kernels: the sanitizer cases
  # on the fused path, with the CUDA kernels where they apply.
  if command -v compute-sanitizer >/dev/null; then
    TAIL=8 step fused_memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 DEFORMCONV_GPU_PATH=fused \
      compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/sanitizer_cases.py \
      --cuda-kernels
    TAIL=8 step fused_racecheck 120 env DEFORMCONV_GPU_PATH=fused \
      compute-sanitizer --tool racecheck --error-exitcode 9 python3 benchmarks/sanitizer_cases.py \
      --no-double --cuda-kernels
  fi
fi  # part fused

# 3. The CPU on this host (AMX on H100/H200 servers; no CI machine has AMX). The path tests
#    force every CPU path; the 16-bit sequence runs each path in a child process, so a crash
#    names its path and case; then the op's CPU tests with the 16-bit fused tiles forced (the
#    automatic choice keeps them off AMX CPUs until these pass); then the CPU op against dense
#    conv (oneDNN runs dense bfloat16 conv on AMX), automatic and with forced 16-bit tiles.
if part cpu; then
  python3 - >"$LOG/cpu.txt" 2>&1 <<'PY' || true
import torch, deformconv
caps = torch._C._cpu._get_cpu_capability()
print("cpu:", caps.get("cpu_name"), "|", " ".join(sorted(k for k, v in caps.items() if v is True and k.startswith(("amx", "avx512_bf16", "avx512_fp16")))))
for dt in (torch.float32, torch.bfloat16, torch.float16):
    print(f"{str(dt)[6:]}: {torch.ops.deformconv._cpu_path(dt)}")
PY
  cat "$LOG/cpu.txt"
  CPU_XDIST=()
  python3 -c "import xdist" 2>/dev/null && CPU_XDIST=(-n 8)
  TAIL=30 step cpu_tests 120 python3 -m pytest -q -rfE --maxfail=30 "${CPU_XDIST[@]}" \
    tests/test_cpu_16bit_sequence.py tests/test_cpu_paths.py tests/test_errors.py tests/test_package.py
  TAIL=20 step cpu_fused16 100 env DEFORMCONV_CPU_FORWARD=fused DEFORMCONV_CPU_BACKWARD=fused \
    DEFORMCONV_CPU_16BIT=native python3 -m pytest -q -rfE --maxfail=30 "${CPU_XDIST[@]}" -k "not cuda" \
    tests/test_ops.py tests/test_mixed_precision.py tests/test_autocast.py tests/test_double_backward.py
  CPU_BENCH=(benchmarks/bench_deform_conv2d.py --device cpu --dtype float32,bfloat16
    --shapes resnet-stage,detection-like --no-pure --no-torchvision --min-run-time 0.3
    --rounds 2)
  TAIL=20 step cpu_bench 60 python3 "${CPU_BENCH[@]}" --json "$OUT/cpu_bench.json"
  TAIL=20 step cpu_bench16 40 env DEFORMCONV_CPU_FORWARD=fused DEFORMCONV_CPU_BACKWARD=fused \
    python3 "${CPU_BENCH[@]}" --dtype bfloat16 --json "$OUT/cpu_bench_fused16.json"
fi

if part gpu; then
# 4. Tests: CUDA vs CPU / oracle / torchvision, gradcheck, 16-bit bounds, determinism,
#    large indices, bad devices, autocast, mixed dtypes; then the op tests on both devices.
TEST_FILES=()
for f in tests/test_cuda.py tests/test_autocast.py tests/test_mixed_precision.py tests/test_ops.py \
  tests/test_double_backward.py; do
  [[ -f "$f" ]] && TEST_FILES+=("$f")
done
# --maxfail instead of -x: one device run should show every failure, not the first. With
# pytest-xdist (4 workers), a test that crashes the interpreter fails alone and the rest run on.
XDIST=()
python3 -c "import xdist" 2>/dev/null && XDIST=(-n 4)
TAIL=40 step tests 200 python3 -m pytest -q -rfE --maxfail=30 "${XDIST[@]}" "${TEST_FILES[@]}"

# A test that crashed its worker: rerun the first one under cuda-gdb for a native backtrace.
CRASHED=$(grep -o "crashed while running '[^']*'" "$LOG/tests.log" | head -n 1 | cut -d"'" -f2 || true)
if [[ -n "$CRASHED" ]] && command -v cuda-gdb >/dev/null; then
  TAIL=40 step crash_bt 90 cuda-gdb -q -batch -ex run -ex bt --args \
    python3 -m pytest -q -p no:cacheprovider "$CRASHED"
fi

# The 64-bit-index kernels on the CPU-parity sweep (the large-index test covers them only at
# > 2^31 elements).
TAIL=5 step tests64 60 env DEFORMCONV_FORCE_INT64_INDEX=1 python3 -m pytest -q -rfE \
  tests/test_cuda.py -k "matches_cpu or deterministic"

# 5. Timings the benchmark script does not take: deterministic vs fast backward, TF32 off/on
#    for fp32, fp16 vs bf16, peak memory vs torchvision, r50-c3 at batch 64 (CUDA events).
step extras 90 python3 - "$OUT" "$LOG" <<'PY'
import json, sys, torch
import torch.utils.deterministic
import torch.nn.functional as F
import deformconv
out_dir, log_dir = sys.argv[1], sys.argv[2]
try:
    import torchvision.ops as tvops
except Exception:  # noqa: BLE001
    tvops = None
dev = "cuda"

def args(n, c, h, w, co, dtype):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(n, c, h, w, device=dev, dtype=dtype, generator=g)
    off = (torch.rand(n, 18, h, w, device=dev, generator=g) * 4 - 2).to(dtype)
    m = torch.rand(n, 9, h, w, device=dev, generator=g).to(dtype)
    wt = (torch.randn(co, c, 3, 3, device=dev, generator=g) / (9 * c) ** 0.5).to(dtype)
    b = torch.zeros(co, device=dev, dtype=dtype)
    return [t.requires_grad_() for t in (x, off, wt, b, m)]

def ours(x, off, w, b, m):
    return deformconv.deform_conv2d(x, off, w, b, padding=1, mask=m)

def tv(x, off, w, b, m):
    return tvops.deform_conv2d(x, off, w, b, padding=1, mask=m)

def dense(x, off, w, b, m):
    return F.conv2d(x, w, b, padding=1)

def time_ms(fn, a, backward, reps=10):
    go = None
    def once():
        nonlocal go
        if backward:
            y = fn(*a)
            if go is None:
                go = torch.randn_like(y)
            torch.autograd.grad(y, a if fn is not dense else [a[0], a[2], a[3]], go)
        else:
            with torch.no_grad():
                fn(*a)
    for _ in range(3):
        once()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); once(); e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return sorted(ts)[len(ts) // 2]

def peak_mb(fn, a):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = fn(*a)
    torch.autograd.grad(y, a if fn is not dense else [a[0], a[2], a[3]], torch.ones_like(y))
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20

rows = []
def row(label, **cols):
    rows.append(dict(case=label, **cols))
    print(label, cols, flush=True)
    json.dump(rows, open(f"{out_dir}/extras.json", "w"), indent=1)  # kept if the step times out

shapes = {"cifar": (64, 64, 32, 32, 64), "r50-c3": (8, 128, 100, 168, 128)}
for name, s in shapes.items():
    a32 = args(*s, torch.float32)
    fast = time_ms(ours, a32, True)
    # Deterministic timings without torch's NaN-filling of uninitialized outputs.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.use_deterministic_algorithms(True)
    det = time_ms(ours, a32, True)
    torch.use_deterministic_algorithms(False)
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = time_ms(ours, a32, True)
    torch.backends.cuda.matmul.allow_tf32 = False
    row(f"{name} fp32 fwd+bwd", fast_ms=fast, deterministic_ms=det, tf32_ms=tf32)
    for dt in (torch.float16, torch.bfloat16):
        a = args(*s, dt)
        r = dict(ours_fwd_ms=time_ms(ours, a, False), ours_fb_ms=time_ms(ours, a, True),
                 dense_fwd_ms=time_ms(dense, a, False), dense_fb_ms=time_ms(dense, a, True),
                 ours_peak_mb=peak_mb(ours, a))
        torch.use_deterministic_algorithms(True)
        r["ours_det_fb_ms"] = time_ms(ours, a, True)
        torch.use_deterministic_algorithms(False)
        if tvops is not None and dt == torch.float16:
            r["tv_fb_ms"] = time_ms(tv, a, True)
            r["tv_peak_mb"] = peak_mb(tv, a)
        row(f"{name} {str(dt)[6:]}", **r)
# Batch 64 on r50-c3 (bounded workspace: no OOM where the dense conv fits).
a = args(64, 128, 100, 168, 128, torch.float16)
row("r50-c3 N=64 fp16", ours_fb_ms=time_ms(ours, a, True, reps=3), ours_peak_mb=peak_mb(ours, a),
    dense_peak_mb=peak_mb(dense, a))
# Deterministic mode when the offsets collapse every sample onto one pixel (the worst case of
# the sort-and-gather: one destination takes all contributions), r50-c3 fp16 and fp32.
def collapse(a):
    x, off, w, b, m = [t.detach() for t in a]
    n, _, h, wd = off.shape
    ys = torch.arange(h, device=dev).view(1, 1, h, 1) - 1 + torch.arange(3, device=dev).repeat_interleave(3).view(1, 9, 1, 1)
    xs = torch.arange(wd, device=dev).view(1, 1, 1, wd) - 1 + torch.arange(3, device=dev).repeat(3).view(1, 9, 1, 1)
    dy = ((h // 2 + 0.25) - ys).expand(1, 9, h, wd)
    dx = ((wd // 2 + 0.25) - xs).expand(1, 9, h, wd)
    off = torch.stack([dy, dx], 2).reshape(1, 18, h, wd)  # (dy, dx) of tap k at channels 2k, 2k+1
    off = off.expand(n, -1, -1, -1).contiguous().to(x.dtype)
    return [t.requires_grad_() for t in (x, off, w, b, m)]
for dt in (torch.float16, torch.float32):
    a = collapse(args(8, 128, 100, 168, 128, dt))
    fast = time_ms(ours, a, True, reps=3)
    torch.use_deterministic_algorithms(True)
    det = time_ms(ours, a, True, reps=3)
    torch.use_deterministic_algorithms(False)
    row(f"r50-c3 {str(dt)[6:]} collapsed offsets", fast_fb_ms=fast, deterministic_fb_ms=det)
# Workspace budget against speed and peak memory (the default is 256 MiB), r50-c3 fp16.
import os
a = args(8, 128, 100, 168, 128, torch.float16)
for mb in (8, 16, 32, 64, 128, 256):
    os.environ["DEFORMCONV_WORKSPACE_MB"] = str(mb)
    row(f"r50-c3 fp16 workspace {mb} MiB", ours_fwd_ms=time_ms(ours, a, False),
        ours_fb_ms=time_ms(ours, a, True), ours_peak_mb=peak_mb(ours, a))
os.environ.pop("DEFORMCONV_WORKSPACE_MB")
with open(f"{log_dir}/extras.md", "w") as f:
    f.write("| case | measurements (ms / MiB) |\n|---|---|\n")
    for r in rows:
        f.write(f"| {r['case']} | " + ", ".join(f"{k}={v:.3g}" for k, v in r.items() if k != "case") + " |\n")
# Where the GPU time goes: kernels of 5 forward+backward passes, r50-c3 fp16 and fp32.
from torch.profiler import ProfilerActivity, profile
for dt in (torch.float16, torch.float32):
    a = args(8, 128, 100, 168, 128, dt)
    time_ms(ours, a, True, reps=1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            y = ours(*a)
            torch.autograd.grad(y, a, torch.ones_like(y))
        torch.cuda.synchronize()
    try:
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=14)
    except Exception:  # noqa: BLE001 (older torch: the cuda_ key)
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14)
    print(f"profile r50-c3 {dt}, 5 x forward+backward\n{table}", flush=True)
PY

# 6. The GPU benchmark (GPU_SHAPES of bench_deform_conv2d.py) against torchvision and dense cuDNN conv.
TAIL=45 step bench 170 python3 benchmarks/bench_deform_conv2d.py --device cuda \
  --dtype float32,float16,bfloat16 --no-pure --min-run-time 0.2 --json "$OUT/gpu_bench.json"

# 7. compute-sanitizer on tiny cases (memcheck; racecheck on the backward), if the toolkit has it.
#    No caching allocator, so that memcheck sees each tensor as its own allocation.
if command -v compute-sanitizer >/dev/null; then
  TAIL=8 step memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
    --error-exitcode 9 python3 benchmarks/sanitizer_cases.py
  TAIL=8 step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
    python3 benchmarks/sanitizer_cases.py --no-double
else
  SUMMARY+=("sanitizer|not installed|0")
fi
fi  # part gpu
