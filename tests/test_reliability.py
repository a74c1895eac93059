"""Issue #6: a run survives kill -9, Ctrl-C/SIGTERM, divergence and an unwritable disk.

Everything here is the real thing: `python -m nets.train` processes killed with real signals,
checkpoints written to and read back from disk, a learning rate that really diverges, a file-size
limit the kernel really enforces. Data files and downloads are covered by tests/test_data.py and
tests/test_download.py, untrusted checkpoints by tests/test_reliability_checkpoint.py and bad
flags by tests/test_reliability_cli.py; docs/reliability.md tabulates all of them.

Every run is a tiny model on the first 64 real test digits (8 steps per epoch) and runs on one
thread (torch.set_num_threads(1) here, OMP_NUM_THREADS=1 in child processes): on the shared
2-core machine a second thread made each step ten times slower, and one thread count for every
run keeps the float reductions in one order, so that runs compare bit for bit.
"""

import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import run_in_process, tiny_flags

from nets import train
from nets.checkpoint import load_checkpoint
from nets.training.metrics_log import read_metrics

TINY = tiny_flags()
STEPS_PER_EPOCH = 64 // 8
STEPS = 4 * STEPS_PER_EPOCH
KILLS = 6






def train_in_process(*argv) -> tuple[int, str]:
    return run_in_process(train.main, *argv)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist):
    """An uninterrupted STEPS-step run: its metrics rows and its final checkpoint."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, stderr = train_in_process(*TINY, "--data-dir", mnist, "--max-steps", STEPS,
                                  "--run-dir", run_dir)
    assert code == 0, stderr
    return read_metrics(run_dir / "metrics.jsonl"), load_checkpoint(run_dir)


def assert_same_training_state(got: dict, want: dict) -> None:
    """Bit-identical model, EMA, optimizer moments and RNG states at the same step."""
    assert got["step"] == want["step"]
    for key in ("model", "ema"):
        assert got[key].keys() == want[key].keys()
        for name, tensor in want[key].items():
            assert torch.equal(got[key][name], tensor), f"{key}.{name}"
    for index, moments in want["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(torch.as_tensor(got["optimizer"]["state"][index][name]),
                               torch.as_tensor(value)), f"optimizer {index}.{name}"
    for name in ("generator", "torch"):
        assert torch.equal(got["rng"][name], want["rng"][name]), f"rng {name}"


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for key in ("model", "ema")
               for t in state[key].values() if t.is_floating_point())


class TrainProcess:
    """``python -m nets.train`` in a child process, its stderr collected line by line."""

    def __init__(self, *argv, cwd):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "nets.train", *map(str, argv)],
                                     cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                       daemon=True)
        self.reader.start()

    def progress_steps(self) -> list[int]:
        """The steps of the progress lines printed so far (one per log flush)."""
        return [int(line.split()[1].split("/")[0]) for line in list(self.lines)
                if line.startswith("step ")]

    def wait_for_step_above(self, step: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(s > step for s in self.progress_steps()):
            assert self.proc.poll() is None, "".join(self.lines)[-2000:]
            assert time.monotonic() < deadline, f"no progress past step {step}"
            time.sleep(0.02)

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        with self:
            self.proc.wait(timeout=timeout)
        return self.proc.returncode, "".join(self.lines)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # a failed test never leaves its child running
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# 3. kill -9 at random moments: the previous checkpoint always loads; the run completes intact


@pytest.mark.slow
def test_kill_9_at_random_moments_keeps_a_loadable_checkpoint_and_the_run_completes_intact(
        tmp_path, mnist, reference):
    """Six SIGKILLs at seeded random moments: once the child has trained 0-2 steps past its
    resume point, within the next 0.1 s, so kills land inside steps, log appends and checkpoint
    writes (both every few steps). After each: the checkpoint loads, never moves back, holds
    finite weights, and the log agrees with the uninterrupted run. The last resume finishes the
    run, bit-identical to the reference."""
    ref_rows, ref_state = reference
    rng = random.Random(6)
    run_dir = tmp_path / "run"
    args = [*TINY, "--data-dir", mnist, "--max-steps", STEPS, "--log-every", 2,
            "--checkpoint-every", 3]
    saved = [0]
    for _ in range(KILLS):
        where = ["--resume", run_dir] if saved[-1] else ["--run-dir", run_dir]
        with TrainProcess(*args, *where, cwd=tmp_path) as child:
            # Past the first checkpoint (step 3) on the first start, past the resume point after.
            child.wait_for_step_above(max(saved[-1], 3) + rng.randint(0, 2))
            time.sleep(rng.uniform(0.0, 0.1))
            child.proc.send_signal(signal.SIGKILL)
            code, stderr = child.finish()
        assert code == -signal.SIGKILL, f"the run ended before the kill: {stderr[-1000:]}"
        state = load_checkpoint(run_dir)
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert saved[-1] <= state["step"] <= rows[-1]["step"]
        assert rows == ref_rows[: len(rows)]  # nothing logged twice, skipped or altered
        assert all_finite(state)
        saved.append(state["step"])
    assert len(saved) == KILLS + 1 and saved[-1] < STEPS
    print(f"checkpoint step after each of the {KILLS} kills: {saved[1:]}")

    code, stderr = train_in_process("--resume", run_dir)
    assert code == 0, stderr
    assert read_metrics(run_dir / "metrics.jsonl") == ref_rows
    assert_same_training_state(load_checkpoint(run_dir), ref_state)


SAVE_LOOP = """
import sys, torch
from nets.checkpoint import save_checkpoint
w = torch.empty(16 * 2**20)  # 64 MB: each save takes long enough to be killed inside
for i in range(1, 1000):
    w.fill_(i)
    print("begin", i, flush=True)
    save_checkpoint({"model": {"w": w}, "config": {"i": i}}, sys.argv[1])
"""


@pytest.mark.slow
def test_kill_9_inside_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    """A child saves 64 MB checkpoints in a loop; SIGKILL lands 0-20 ms after save 2 creates
    its temp file, inside torch.save or fsync. checkpoint.pt is then save 1 or save 2, whole."""
    path = tmp_path / "checkpoint.pt"
    child = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)], text=True,
                             stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in child.stdout:
            if line.split() == ["begin", "2"]:
                break
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".checkpoint.pt.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(random.Random(2).uniform(0.0, 0.02))
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    state = load_checkpoint(path)
    i = state["config"]["i"]
    assert i in (1, 2) and bool((state["model"]["w"] == i).all())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    print(f"killed inside save 2: checkpoint.pt holds save {i}; temp files left: {leftovers}")


# ---------------------------------------------------------------------------------------------
# 4. SIGINT / SIGTERM: checkpoint, exit 130 / 143, and --resume continues bit for bit


@pytest.mark.slow
def test_sigint_then_sigterm_each_save_and_exit_by_convention_and_the_run_resumes_bit_identically(
        tmp_path, mnist, reference):
    """Ctrl-C (SIGINT) a fresh run, then SIGTERM the resumed one, each at a seeded random moment.
    The periodic checkpoint is off (--checkpoint-every 1000), so only the signal can save, and
    --log-every 5 puts the signal between log flushes. Each child exits 130 / 143 with the
    interrupted step saved and logged; the last resume ends bit-identical to the reference."""
    ref_rows, ref_state = reference
    run_dir = tmp_path / "run"
    rng = random.Random(4)
    where, stopped = ["--run-dir", run_dir], 0
    for signum, exit_code in [(signal.SIGINT, 130), (signal.SIGTERM, 143)]:
        with TrainProcess(*TINY, "--data-dir", mnist, "--max-steps", STEPS, "--log-every", 5,
                          "--checkpoint-every", 1000, *where, cwd=tmp_path) as child:
            child.wait_for_step_above(stopped)
            time.sleep(rng.uniform(0.0, 0.3))
            child.proc.send_signal(signum)
            code, stderr = child.finish()
        assert code == exit_code, stderr[-2000:]
        state = load_checkpoint(run_dir)
        assert stopped < state["step"] < STEPS
        assert f"interrupted at step {state['step']}: checkpoint saved" in stderr
        assert "Traceback" not in stderr
        assert read_metrics(run_dir / "metrics.jsonl") == ref_rows[: state["step"]]
        print(f"{signal.Signals(signum).name} landed at step {state['step']}")
        where, stopped = ["--resume", run_dir], state["step"]

    code, stderr = train_in_process("--resume", run_dir)
    assert code == 0, stderr
    assert f"resumed from step {stopped}" in stderr
    assert read_metrics(run_dir / "metrics.jsonl") == ref_rows
    assert_same_training_state(load_checkpoint(run_dir), ref_state)


@pytest.mark.parametrize("stops", [(13,), (5, 16)],
                         ids=["mid-epoch-between-log-flushes", "flush-aligned-then-epoch-boundary"])
def test_a_run_stopped_and_resumed_is_bit_identical_to_the_uninterrupted_run(
        tmp_path, mnist, reference, stops):
    """Stop with --max-steps at each of ``stops`` (8 steps per epoch, --log-every 5), resume
    from there; the last leg also logs every 7 steps, which must not change a number."""
    ref_rows, ref_state = reference
    run_dir = tmp_path / "run"
    code, stderr = train_in_process(*TINY, "--data-dir", mnist, "--log-every", 5,
                                  "--max-steps", stops[0], "--run-dir", run_dir)
    assert code == 0, stderr
    for stop in stops[1:]:
        assert train_in_process("--resume", run_dir, "--max-steps", stop)[0] == 0
        assert load_checkpoint(run_dir)["step"] == stop
    code, stderr = train_in_process("--resume", run_dir, "--max-steps", STEPS, "--log-every", 7)
    assert code == 0, stderr
    assert read_metrics(run_dir / "metrics.jsonl") == ref_rows
    assert_same_training_state(load_checkpoint(run_dir), ref_state)


def test_a_conditional_run_with_dropout_resumes_bit_identically(tmp_path, mnist):
    """Label dropout draws from the run's generator, U-Net dropout from torch's global RNG:
    both states travel in the checkpoint."""
    args = [*TINY, "--data-dir", mnist, "--conditional", "--dropout", "0.1", "--log-every", 3]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_in_process(*args, "--max-steps", 12, "--run-dir", whole)[0] == 0
    assert train_in_process(*args, "--max-steps", 5, "--run-dir", split)[0] == 0
    assert train_in_process("--resume", split, "--max-steps", 12)[0] == 0
    assert read_metrics(split / "metrics.jsonl") == read_metrics(whole / "metrics.jsonl")
    assert_same_training_state(load_checkpoint(split), load_checkpoint(whole))


def test_a_row_torn_by_a_kill_mid_append_does_not_block_resume(tmp_path, mnist, reference):
    """The state a kill inside the metrics append leaves: an unterminated last line."""
    ref_rows, _ = reference
    run_dir = tmp_path / "run"
    assert train_in_process(*TINY, "--data-dir", mnist, "--max-steps", 4, "--run-dir", run_dir)[0] == 0
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "epoch": 0, "lo')
    code, stderr = train_in_process("--resume", run_dir, "--max-steps", 6)
    assert code == 0, stderr
    assert read_metrics(run_dir / "metrics.jsonl") == ref_rows[:6]


# ---------------------------------------------------------------------------------------------
# 6. Numerics: divergence stops the run naming the step; the good checkpoint is never replaced


DIVERGE = ["--lr", "1000", "--warmup-steps", "0", "--grad-clip", "1e30"]  # NaN loss at step 3


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, mnist):
    """A real divergence (AdamW at lr 1000): two good steps are saved, then the resumed run
    checks losses only every 5 steps. The flush at step 5 finds the NaN of step 3, names
    step 3, exits 1, and the step-2 checkpoint is byte-for-byte what it was."""
    run_dir = tmp_path / "run"
    code, stderr = train_in_process(*TINY, "--data-dir", mnist, *DIVERGE, "--log-every", 1,
                                  "--max-steps", 2, "--run-dir", run_dir)
    assert code == 0, stderr
    good = (run_dir / "checkpoint.pt").read_bytes()
    code, stderr = train_in_process("--resume", run_dir, "--max-steps", 10, "--log-every", 5,
                                  "--checkpoint-every", 5)
    assert code == 1
    [line] = error_lines(stderr)
    assert "non-finite loss" in line and "at step 3;" in line and "last good checkpoint" in line
    assert (run_dir / "checkpoint.pt").read_bytes() == good
    state = load_checkpoint(run_dir)
    assert state["step"] == 2 and all_finite(state)
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]
    assert run_files(run_dir) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def run_files(run_dir):
    """The run directory's files but the live previews (temporary files, ``.name.XXXX.tmp``, stay in)."""
    return sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("preview"))


# ---------------------------------------------------------------------------------------------
# 8. Disk: an unwritable run directory fails before any data is read; a full disk mid-run keeps
# the last checkpoint


@pytest.mark.parametrize("where", ["under-a-regular-file", "under-proc", "read-only-dir"])
def test_an_unwritable_run_dir_exits_2_before_training_starts(tmp_path, mnist, where):
    if where == "under-a-regular-file":
        (tmp_path / "file.txt").write_text("not a folder")
        run_dir = tmp_path / "file.txt" / "run"
    elif where == "under-proc":
        run_dir = "/proc/ddpm-run"
    else:
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 500 does not stop root's writes (the other two "
                        "cases cover it)")
        (tmp_path / "ro").mkdir(mode=0o500)
        run_dir = tmp_path / "ro" / "run"
    start = time.perf_counter()
    code, stderr = train_in_process(*TINY, "--data-dir", mnist, "--max-steps", 2,
                                  "--run-dir", run_dir)
    assert code == 2
    assert stderr.strip().splitlines() == error_lines(stderr)  # one line, nothing else
    assert len(error_lines(stderr)) == 1 and "--run-dir" in stderr and str(run_dir) in stderr
    assert "data:" not in stderr and time.perf_counter() - start < 5  # before the data load


def test_a_full_disk_mid_run_exits_1_and_keeps_the_last_checkpoint(tmp_path, mnist, reference):
    """RLIMIT_FSIZE below the checkpoint's size makes the kernel refuse the write (EFBIG, as
    a full disk's ENOSPC would): the save at step 3 fails, the step-2 checkpoint and the log
    stay intact, no temp file is left, and a resume with room finishes like the reference."""
    ref_rows, _ = reference
    run_dir = tmp_path / "run"
    assert train_in_process(*TINY, "--data-dir", mnist, "--max-steps", 2, "--run-dir", run_dir)[0] == 0
    good = (run_dir / "checkpoint.pt").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) // 2, hard))
    try:
        code, stderr = train_in_process("--resume", run_dir, "--max-steps", 4,
                                      "--checkpoint-every", 1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 1
    [line] = error_lines(stderr)
    assert line.startswith("error: step 3: ") and "File too large" in line and "kept" in line
    assert (run_dir / "checkpoint.pt").read_bytes() == good
    assert run_files(run_dir) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    code, stderr = train_in_process("--resume", run_dir, "--max-steps", 4)
    assert code == 0, stderr
    assert read_metrics(run_dir / "metrics.jsonl") == ref_rows[:4]


def test_a_fresh_run_refuses_a_run_dir_that_holds_a_checkpoint(tmp_path, mnist):
    run_dir = tmp_path / "run"
    assert train_in_process(*TINY, "--data-dir", mnist, "--max-steps", 2, "--run-dir", run_dir)[0] == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, stderr = train_in_process(*TINY, "--data-dir", mnist, "--max-steps", 2, "--run-dir", run_dir)
    assert code == 2
    [line] = error_lines(stderr)
    assert "--run-dir" in line and f"--resume {run_dir}" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


# ---------------------------------------------------------------------------------------------
# Data missing and no mirror reachable


@pytest.mark.slow
def test_missing_data_offline_exits_2_naming_the_four_files_and_data_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDPM_MNIST_MIRRORS": "http://127.0.0.1:1/"}
    proc = subprocess.run(
        [sys.executable, "-m", "nets.train", "--data-dir", str(empty), "--run-dir",
         str(tmp_path / "run"), *TINY], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in proc.stderr
    assert "--data-dir" in proc.stderr and str(empty) in proc.stderr
    assert list(empty.iterdir()) == []  # no partial download left behind
