"""What the live previews cost a training run: ``python benchmarks/preview_cost.py``.

Runs the trainer itself (``nets.fit``, on the config ``python -m nets.train`` makes of the same
flags) for the same number of steps, with its default previews (a tenth of the run,
``nets.training.preview``) and with ``--no-preview``, alternating the two for ``--rounds`` rounds,
and takes the training loop's seconds and the previews' own from the run it returns
(``TrainedRun.seconds``, ``.preview_seconds``: data loading and start-up excluded, the same in
both). The result is the median over rounds of (with previews) / (without), measured back to back.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as `python benchmarks/<script>.py`
    import sys
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, as with `python -m`

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import measure

QUICK = ["--limit", "256", "--batch-size", "16", "--base-channels", "8", "--channel-mults", "1,2",
         "--timesteps", "50"]


def train_seconds(flags: list[str], run_dir: Path) -> tuple[float, float]:
    """The training loop's seconds of one run of the trainer on ``flags``, and its previews' own."""
    from nets import cli
    from nets.train import config_from_flags
    from nets.training.fit import fit
    from nets.training.flags import build_parser as train_flags

    args, given = cli.given_flags(train_flags(), [*flags, "--run-dir", str(run_dir), "--no-figures"])
    with contextlib.redirect_stderr(io.StringIO()):  # the run's progress lines
        run = fit(config_from_flags(args, given)[0])
    return run.seconds, run.preview_seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/preview_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("DDPM_DATA_DIR"), help="MNIST folder")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (with, without previews)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the runs")
    p.add_argument("--quick", action="store_true", help="a tiny model and 12 steps (a smoke run)")
    p.add_argument("--json", type=Path, help="write the result here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    flags = ["--split", "test", "--max-steps", str(12 if args.quick else args.steps)]
    flags += QUICK if args.quick else []
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            with_previews, spent = train_seconds(flags, Path(tmp) / f"with-{r}")
            without, _ = train_seconds([*flags, "--no-preview"], Path(tmp) / f"without-{r}")
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
        measure.write_json(args.json, {"rounds": rounds, "median_ratio": ratio, "median_share": share,
                                       "flags": flags,
                                       "threads": args.threads,
                                       "machine": measure.machine(torch.device("cpu"))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
