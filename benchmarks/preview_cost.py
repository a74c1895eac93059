"""What the live previews cost a training run: ``python benchmarks/preview_cost.py``.

Runs the trainer itself (``python -m nets.train``) on the same flags and the same number of
steps, with its default previews (a tenth of the run, ``nets.training.preview``) and with
``--no-preview``, alternating the two for ``--rounds`` rounds, and times the training loop each
reports ("trained to step N in S s": data loading and start-up excluded, the same in both). The
result is the median over rounds of (with previews) / (without), measured back to back.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as `python benchmarks/<script>.py`
    import sys
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, as with `python -m`

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import measure

TRAINED = re.compile(r"trained to step (\d+) in ([0-9.]+)s")
PREVIEWS = re.compile(r"previews: (\d+) written in ([0-9.]+)s")
QUICK = ["--limit", "256", "--batch-size", "16", "--base-channels", "8", "--channel-mults", "1,2",
         "--timesteps", "50"]


def train_seconds(flags: list[str], run_dir: Path, threads: int) -> tuple[float, float]:
    """The training loop's seconds of one ``nets.train`` run (it must finish), and the seconds it
    says its previews took (0 without)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "nets.train", *flags, "--run-dir", str(run_dir),
                           "--no-figures"], capture_output=True, text=True, env=env)
    found = TRAINED.search(proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"error: nets.train failed: {proc.stderr.strip().splitlines()[-1:]}")
    previews = PREVIEWS.search(proc.stderr)
    return float(found.group(2)), float(previews.group(2)) if previews else 0.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/preview_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("DDPM_DATA_DIR"), help="MNIST folder")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (with, without previews)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    p.add_argument("--quick", action="store_true", help="a tiny model and 12 steps (a smoke run)")
    p.add_argument("--json", type=Path, help="write the result here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = ["--split", "test", "--max-steps", str(12 if args.quick else args.steps)]
    flags += QUICK if args.quick else []
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            with_previews, spent = train_seconds(flags, Path(tmp) / f"with-{r}", args.threads)
            without, _ = train_seconds([*flags, "--no-preview"], Path(tmp) / f"without-{r}", args.threads)
            rounds.append({"with_previews_s": with_previews, "without_s": without, "previews_s": spent,
                           "ratio": with_previews / without, "share": spent / with_previews})
            print(f"round {r + 1}: {with_previews:.1f}s with previews ({spent:.1f}s of them in the "
                  f"previews), {without:.1f}s without: {with_previews / without:.3f}x", file=sys.stderr)
    ratio = statistics.median(r["ratio"] for r in rounds)
    share = statistics.median(r["share"] for r in rounds)
    print(f"previews cost {100 * (ratio - 1):+.1f}% of the training loop's time, paired (median of "
          f"{len(rounds)} rounds, {flags[flags.index('--max-steps') + 1]} steps); their own timer: "
          f"{100 * share:.1f}%")
    if args.json:
        import torch

        measure.write_json(args.json, {"rounds": rounds, "median_ratio": ratio, "median_share": share,
                                       "flags": flags,
                                       "threads": args.threads,
                                       "machine": measure.machine(torch.device("cpu"))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
