"""Issue #8: multi-process training with torch.distributed, launched by torchrun (gloo on CPU).

The end-to-end tests start real ``python -m torch.distributed.run --standalone --nproc_per_node=2
-m nets.train`` jobs on the first 256 real test digits with a tiny model, one thread per process
(OMP_NUM_THREADS=1: on the shared 2-core machine more threads make each step many times slower).
One-process runs go through ``train.main`` in this process on one thread (the same code path as
``python -m nets.train``, without a second interpreter start-up).

Two processes with --batch-size 8 must train like one process with --batch-size 16: the same
losses and, to float tolerance, the same weights, whichever world size wrote the checkpoint that
a run resumes from.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHILD_ENV, run_in_process, tiny_flags

from nets import train
from nets.checkpoint import load_checkpoint
from nets.training import distributed
from nets.training.config import TrainConfig, lr_at
from nets.training.metrics_log import read_metrics

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = [*tiny_flags(256, batch_size=None), "--log-every", "3",
        "--precision", "fp32"]  # the comparisons below are to fp32 rounding; bf16 would be ~1e-2
STEPS = 6
# Adam divides by √v̂: a bias whose summed gradient is ~0 (up.3.0.conv2.bias here) turns the
# float rounding of (mean of 8 + mean of 8) / 2 versus mean of 16 into an update difference of a
# fraction of the learning rate. Six warm-up steps move any weight by at most Σ lr = 2.1e-4.
# With fp32 CPU training in channels_last (the convolutions' bias gradients are reduced in another
# order) that one entry differs by up to 3.7e-5; the others by less than 1e-6. So: every entry
# within a quarter of Σ lr, and all but a handful (0.1 %) within 1e-6.
SUM_LR = sum(lr_at(s, TrainConfig(), STEPS) for s in range(STEPS))  # the default warm-up
WEIGHT_ATOL = SUM_LR / 4
TIGHT_ATOL, TIGHT_SHARE = 1e-6, 0.999






def one_process(*argv) -> str:
    """``python -m nets.train`` in this process (no torchrun): its stderr; fails on a non-zero exit."""
    code, stderr = run_in_process(train.main, *argv)
    assert code == 0, stderr
    return stderr


def two_processes(cwd: Path, *argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """A torchrun job of two ``nets.train`` processes, run to its end in the folder ``cwd``."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*TORCHRUN, "-m", "nets.train", *map(str, argv)], cwd=cwd, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(run_dir / "metrics.jsonl")]


def assert_same_weights(got: dict, want: dict) -> None:
    for key in ("model", "ema"):
        assert got[key].keys() == want[key].keys()  # no "module." prefix from DDP
        for name, tensor in want[key].items():
            torch.testing.assert_close(got[key][name], tensor, rtol=0, atol=WEIGHT_ATOL,
                                       msg=lambda m, k=key, n=name: f"{k}.{n}: {m}")
        diffs = torch.cat([(got[key][n] - t).abs().flatten() for n, t in want[key].items()])
        loose = int((diffs > TIGHT_ATOL).sum())
        assert loose <= (1 - TIGHT_SHARE) * len(diffs), f"{key}: {loose} of {len(diffs)} differ by > 1e-6"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist):
    """One process, --batch-size 16, STEPS steps: the run every two-process run must reproduce."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    one_process(*TINY, "--data-dir", mnist, "--batch-size", 16, "--max-steps", STEPS, "--run-dir", run_dir)
    return losses(run_dir), load_checkpoint(run_dir)


@pytest.fixture(scope="module")
def two(tmp_path_factory, mnist):
    """Two processes, --batch-size 8 each, STEPS steps, started in an empty folder."""
    root = tmp_path_factory.mktemp("two")
    proc = two_processes(root / "cwd", *TINY, "--data-dir", mnist, "--batch-size", 8,
                         "--max-steps", STEPS, "--run-dir", root / "run")
    return root, proc


# ---- two processes train like one ------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_of_batch_8_train_like_one_process_of_batch_16(two, reference):
    ref_losses, ref_state = reference
    root, proc = two
    assert len(ref_losses) == STEPS
    assert losses(root / "run") == pytest.approx(ref_losses, rel=1e-5, abs=0)
    state = load_checkpoint(root / "run")
    assert state["step"] == STEPS
    assert_same_weights(state, ref_state)
    assert (state["config"]["batch_size"], state["config"]["world_size"]) == (8, 2)
    assert "batch: 16 images per step = 8 per process × 2 processes; peak lr 0.002" in proc.stderr


@pytest.mark.slow
def test_only_rank_0_writes_files_and_prints(two):
    root, proc = two
    assert sorted(os.listdir(root / "run")) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                "preview-history.npz", "preview-history.png", "preview.png"]
    assert os.listdir(root / "cwd") == []  # nothing beside the run directory
    assert proc.stderr.count("preview: ") == 1  # rank 0 alone previews
    assert proc.stdout.count('"world_size": 2') == 1  # the config, printed once
    assert proc.stderr.count("data: 256 images") == 1
    assert proc.stderr.count(f"trained to step {STEPS}") == 1


# ---- resume on another number of processes ---------------------------------------------------

@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_process_and_continues_the_same_run(
        tmp_path, mnist, reference):
    ref_losses, ref_state = reference
    run_dir = tmp_path / "run"
    two_processes(tmp_path / "cwd", *TINY, "--data-dir", mnist, "--batch-size", 8, "--max-steps", 3,
                  "--run-dir", run_dir)
    stderr = one_process("--resume", run_dir, "--max-steps", STEPS)
    assert "resumed from step 3" in stderr
    assert "batch: 16 images per step = 16 per process × 1 process" in stderr
    assert losses(run_dir) == pytest.approx(ref_losses, rel=1e-5, abs=0)
    state = load_checkpoint(run_dir)
    assert (state["step"], state["config"]["batch_size"], state["config"]["world_size"]) == (STEPS, 16, 1)
    assert_same_weights(state, ref_state)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_processes_and_continues_the_same_run(
        tmp_path, mnist, reference):
    ref_losses, ref_state = reference
    run_dir = tmp_path / "run"
    one_process(*TINY, "--data-dir", mnist, "--batch-size", 16, "--max-steps", 3, "--run-dir", run_dir)
    proc = two_processes(tmp_path / "cwd", "--resume", run_dir, "--max-steps", STEPS)
    assert "resumed from step 3" in proc.stderr
    assert "batch: 16 images per step = 8 per process × 2 processes" in proc.stderr
    assert losses(run_dir) == pytest.approx(ref_losses, rel=1e-5, abs=0)
    state = load_checkpoint(run_dir)
    assert (state["step"], state["config"]["batch_size"], state["config"]["world_size"]) == (STEPS, 8, 2)
    assert_same_weights(state, ref_state)


# ---- failures and signals end the job --------------------------------------------------------

class Job:
    """A torchrun job of two ``nets.train`` processes running until stopped; output collected."""

    def __init__(self, tmp_path: Path, mnist: str, *extra):
        self.run_dir = tmp_path / "run"
        self.proc = subprocess.Popen(
            [*TORCHRUN, "-m", "nets.train", *TINY, "--data-dir", mnist, "--batch-size", "8",
             "--max-steps", "1000000", "--run-dir", str(self.run_dir), *map(str, extra)],
            cwd=tmp_path, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_until_training(self, timeout: float = 90) -> None:
        """Until rank 0 has logged the first losses."""
        metrics, deadline = self.run_dir / "metrics.jsonl", time.monotonic() + timeout
        while not (metrics.exists() and metrics.read_text()):
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.1)

    def worker(self, rank: int) -> int:
        """The pid of the torchrun child whose environment says RANK=rank."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                environ = (stat.parent / "environ").read_bytes().split(b"\0")
                if ppid == self.proc.pid and f"RANK={rank}".encode() in environ:
                    return int(stat.parent.name)
        raise AssertionError(f"no worker with RANK={rank} under torchrun {self.proc.pid}")

    def finish(self, timeout: float) -> tuple[int, str, float]:
        """(exit code, output, seconds it took to end)."""
        start = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:  # a failed test never leaves the job running
                for rank in (0, 1):
                    with contextlib.suppress(AssertionError, ProcessLookupError):
                        os.kill(self.worker(rank), signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)
        return self.proc.returncode, "".join(self.lines), time.monotonic() - start


@pytest.mark.slow
def test_killing_one_rank_ends_the_job_non_zero_within_a_minute(tmp_path, mnist):
    job = Job(tmp_path, mnist)
    job.wait_until_training()
    os.kill(job.worker(1), signal.SIGKILL)
    code, out, seconds = job.finish(timeout=60)
    assert code != 0 and seconds < 60, out[-3000:]
    assert "Signal 9 (SIGKILL) received" in out  # torchrun's summary names the dead rank


@pytest.mark.slow
def test_sigint_to_rank_0_saves_a_checkpoint_and_stops_every_rank_with_130(tmp_path, mnist):
    """Rank 0 alone gets Ctrl-C; at the next log step (every 3) all ranks agree to stop, rank 0
    saves, and the workers exit 130. The first to exit makes torchrun stop the other (which may
    then report SIGTERM instead of 130) and exit 1 itself; no worker raises."""
    job = Job(tmp_path, mnist)
    job.wait_until_training()
    os.kill(job.worker(0), signal.SIGINT)
    code, out, seconds = job.finish(timeout=60)
    assert code != 0, out[-3000:]
    step = load_checkpoint(job.run_dir)["step"]
    assert step % 3 == 0 and f"interrupted at step {step}: checkpoint saved" in out
    assert "exitcode  : 130" in out, out[-3000:]
    assert "[rank0]:" not in out and "[rank1]:" not in out  # torch's prefix of a worker's traceback
    assert len(read_metrics(job.run_dir / "metrics.jsonl")) == step


@pytest.mark.slow
def test_a_rank_that_stops_responding_fails_the_others_after_dist_timeout(tmp_path, mnist):
    """SIGSTOP freezes rank 1: rank 0 waits in DDP's all-reduce for --dist-timeout 5 s, then fails."""
    job = Job(tmp_path, mnist, "--dist-timeout", 5)
    job.wait_until_training()
    rank0, rank1 = job.worker(0), job.worker(1)
    os.kill(rank1, signal.SIGSTOP)
    start, status = time.monotonic(), Path(f"/proc/{rank0}/status")
    with contextlib.suppress(OSError):
        while "zombie" not in status.read_text() and time.monotonic() - start < 60:
            time.sleep(0.1)
    waited = time.monotonic() - start
    os.kill(rank1, signal.SIGKILL)  # torchrun's SIGTERM cannot reach a stopped process
    code, out, _ = job.finish(timeout=60)
    assert code != 0 and 4 < waited < 30, (waited, out[-3000:])
    assert "Timed out waiting 5000ms" in out


# ---- the pieces --------------------------------------------------------------------------------

REPLICA_SCRIPT = """
import torch
from nets.training import distributed

def main():
    world = distributed.setup(torch.device("cpu"), 30)
    torch.manual_seed(0)
    modules = {"model": torch.nn.Linear(3, 2), "ema": torch.nn.Linear(3, 2)}
    world.check_replicas_agree(modules)
    print(f"rank {world.rank}: equal weights pass", flush=True)
    if world.rank == 1:
        with torch.no_grad():
            modules["ema"].bias[1] += 1e-7
    try:
        world.check_replicas_agree(modules)
    except distributed.ReplicaMismatchError as err:
        print(f"rank {world.rank}: {err}", flush=True)
        return 0
    return 1

raise SystemExit(distributed.run(main))
"""


@pytest.mark.slow
def test_replica_check_passes_equal_weights_and_raises_on_every_rank_when_one_differs(tmp_path):
    script = tmp_path / "replicas.py"
    script.write_text(REPLICA_SCRIPT)
    proc = subprocess.run([*TORCHRUN, str(script)], cwd=tmp_path, env=CHILD_ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: equal weights pass" in proc.stdout
        assert f"rank {rank}: the 2 ranks hold different weights in ema.bias" in proc.stdout


def test_without_torchrun_setup_is_one_process_and_starts_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.setup(torch.device("cpu"), 5)
    assert (world.rank, world.size, world.is_main, world.device) == (0, 1, True, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: one plain process too
    assert distributed.setup(torch.device("cpu"), 5).size == 1
    assert not torch.distributed.is_initialized()


def test_a_one_process_world_leaves_values_and_models_as_they_are():
    world, model, loss = distributed.World(), torch.nn.Linear(2, 2), torch.tensor([1.0, 2.0])
    assert world.wrap(model) is model
    assert world.mean(loss) is loss
    assert world.agree_to_stop(signal.SIGINT, False) == (signal.SIGINT, False)
    world.check_replicas_agree({"model": model})


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_ranks_shards_partition_the_global_batch_in_rank_order(size):
    global_batch = 8 * size
    rows = [list(range(global_batch))[distributed.World(rank=r, size=size).shard(global_batch)]
            for r in range(size)]
    assert all(len(r) == 8 for r in rows)
    assert sum(rows, []) == list(range(global_batch))


def test_per_rank_batch_keeps_the_global_batch_of_a_resumed_run():
    assert distributed.per_rank_batch(8, 2, 1) == 16
    assert distributed.per_rank_batch(16, 1, 2) == 8
    assert distributed.per_rank_batch(8, 2, 4) == 4
    with pytest.raises(ValueError, match="global batch of 16 .* does not split over 3 processes"):
        distributed.per_rank_batch(8, 2, 3)
    for bad in (0, "2", True, None):
        with pytest.raises(ValueError, match="world_size"):
            distributed.per_rank_batch(8, bad, 1)


def test_replica_checksums_cover_every_floating_tensor_of_every_module():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.GroupNorm(1, 3))
    names, sums = distributed.replica_checksums({"model": model, "ema": model}, torch.device("cpu"))
    assert names == [f"{p}.{n}" for p in ("model", "ema") for n in model.state_dict()]
    assert sums.shape == (2 * len(names),) and sums.dtype == torch.float64
    weight = model[0].weight.detach().double()
    assert sums[0] == weight.sum() and sums[1] == weight.square().sum()


def test_each_rank_gets_its_own_dropout_seed():
    seeds = {distributed.rank_seed(0, rank, 0) for rank in range(8)}
    assert len(seeds) == 8
    # a function of (seed, rank, step) alone, by the documented derivation (NumPy's SeedSequence,
    # the same in every process), and another step or run seed gives another
    assert distributed.rank_seed(0, 1, 0) == int(np.random.SeedSequence([0, 1, 0]).generate_state(1)[0])
    assert len({distributed.rank_seed(s, 1, t) for s, t in ((0, 0), (0, 1), (1, 0))}) == 3


def test_the_saved_config_of_a_one_process_run_says_world_size_1(tmp_path, mnist):
    one_process(*TINY, "--data-dir", mnist, "--batch-size", 16, "--max-steps", 1,
                "--run-dir", tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["world_size"], saved["batch_size"], saved["dist_timeout"]) == (1, 16, 300.0)
