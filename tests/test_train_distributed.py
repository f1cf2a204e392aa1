# Tests of multi-process training: torchrun with 2 CPU processes (gloo DDP) on the shapes dataset.
import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

import deformconv
from deformconv.train.distributed import (
    ShardSampler,
    all_reduce_sums,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    resolve_device,
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_helpers_are_noops():
    assert not dist.is_initialized()
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert get_rank() == 0 and get_world_size() == 1 and is_main_process()
    assert all_reduce_sums([1, 2.5]) == [1.0, 2.5]
    assert not dist.is_initialized()


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(ShardSampler(11, rank=r, world_size=3)) for r in range(3)] == [4, 4, 3]


def test_resolve_device_errors():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu0")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.slow
@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_torchrun_two_cpu_processes(tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ)  # same deformconv as this process; cwd is a temp dir (see below)
    root = os.path.dirname(os.path.dirname(os.path.abspath(deformconv.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "deformconv.train",
        "cifar",
        "--model",
        "plain",
        "deformable",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--train-size",
        "40",
        "--val-size",
        "21",
        "--test-size",
        "30",
        "--num-classes",
        "4",
        "--width",
        "0.125",
        "--batch-size",
        "8",
        "--no-progress",
        "--no-plot",
        "--output-dir",
        out,
    ]
    proc = subprocess.run(
        cmd, check=False, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # only rank 0 logs: one epoch line and one report per model
    assert proc.stdout.count("epoch 1/1  train") == 2, proc.stdout
    assert proc.stdout.count("world size 2") == 2
    # only rank 0 writes: exactly the expected files, stamped with rank 0
    assert sorted(os.listdir(out)) == ["comparison.json", "deformable", "plain"]
    with open(os.path.join(out, "comparison.json")) as f:
        assert json.load(f)["world_size"] == 2
    for name in ("plain", "deformable"):
        assert sorted(os.listdir(os.path.join(out, name))) == [
            "checkpoint.pt",
            "metrics.csv",
            "metrics.json",
        ]
        with open(os.path.join(out, name, "metrics.json")) as f:
            m = json.load(f)
        assert m["rank"] == 0 and m["config"]["world_size"] == 2
        # metrics were reduced over both ranks: 30 test samples, 15 per rank
        assert m["report"]["num_samples"] == 30
        assert sum(m["report"]["class_total"]) == 30
        # validation accuracy is a fraction of all 21 validation samples (11 + 10 per
        # rank); a rank-local k/11 or k/10 is never of the form j/21 except 0% and 100%
        val_acc = m["history"]["val_acc"][0]
        assert any(abs(val_acc - 100.0 * k / 21) < 1e-6 for k in range(22)), val_acc
