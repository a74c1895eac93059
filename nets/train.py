"""Train a DDPM on MNIST: ``python -m nets.train``.

Flags → config → :func:`nets.training.fit.fit` → report. The run is the library's
(``nets.fit(TrainConfig(...))`` from Python does the same); this module parses the flags, reads
a resumed run's saved config, and turns the library's errors into one line and an exit code (2
bad input, 1 a diverged run, 130/143 SIGINT/SIGTERM with the checkpoint saved). Every run
directory ends up holding ``checkpoint.pt`` (raw and EMA weights, optimizer, RNG states, the
resolved config), ``metrics.jsonl`` (one row per step), ``config.json`` and the seed report's
three figures: ``loss.png``, ``samples.png`` and ``reverse.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from nets import cli
from nets.training import distributed
from nets.training.config import TrainConfig, resumed_config
from nets.training.figures import FIGURE_FILES
from nets.training.fit import END_FIELDS, Resume, TrainedRun, fit, saved_run_config
from nets.training.flags import build_parser, config_values


def config_from_flags(args: argparse.Namespace, given: dict) -> tuple[TrainConfig, Resume | None]:
    """The run's config and, with --resume, how to continue it: the saved config, with the
    resumable fields the command line gave (any other given flag must keep the run's value)."""
    if args.resume is None:
        return TrainConfig(**config_values(given, TrainConfig())), None
    saved = saved_run_config(args.resume)
    changes = {k: v for k, v in config_values(given, saved).items() if k != "run_dir"}
    for name in ("device", "precision"):  # a resume never changes the arithmetic silently
        if name in changes and changes[name] != getattr(saved, name):
            print(f"--resume: {name} {getattr(saved, name)} → {changes[name]}, as the command line "
                  f"asks", file=sys.stderr)
    return resumed_config(saved, changes), Resume(bool(END_FIELDS & changes.keys()), args.redo_figures)


def train(args: argparse.Namespace, given: dict) -> TrainedRun:
    cfg, resume = config_from_flags(args, given)
    return fit(cfg, resume, on_start=print_config)


def print_config(cfg: TrainConfig) -> None:
    """The resolved config on stdout as the run starts (the same as its config.json)."""
    print(json.dumps(asdict(cfg), indent=1), flush=True)


def main(argv: list[str] | None = None) -> int:
    args, given = cli.given_flags(build_parser(), argv)
    run, code = cli.library_call(lambda: train(args, given),
                                 "interrupted (Ctrl-C) before training started; nothing to save",
                                 checkpoint_flag="--resume" if args.resume else "")
    if run is not None and cli.main_process():
        print_next_steps(run.run_dir, run.config.unet["num_classes"] if run.config.conditional else 0)
    return code


def print_next_steps(run_dir: Path, classes: int) -> None:
    """The run's last lines: where its files are, and the next command (``classes``: of a
    conditional model, else 0)."""
    made = [name for name in FIGURE_FILES if (run_dir / name).exists()]
    if made:
        print(f"figures: {', '.join(str(run_dir / name) for name in made)}", file=sys.stderr)
    ask = f" --class {min(7, classes - 1)} --guidance 2" if classes else ""
    print(f"next: python -m nets.sample --checkpoint {run_dir}{ask}   (from Python: "
          f"nets.load(\"{run_dir}\").sample(16))", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(distributed.run(main))
