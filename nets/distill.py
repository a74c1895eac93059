"""Distil a trained model down to a few network calls: ``python -m nets.distill``.

Two methods (``--method``). **consistency** tunes the teacher into a consistency model (ECT, Geng
et al. 2024; the math in ``diffusion_core.consistency``): one run in which the model learns to
map any noise level straight to the data, so it samples in 1, 2, ... calls
(``nets.sample --steps K``; the default is the best measured, docs/results.md):

    python -m nets.distill --method consistency --teacher runs/<name> --max-minutes 20 \
        --run-dir runs/<name>-cm
    python -m nets.sample --checkpoint runs/<name>-cm               # its default calls

Its folder holds ``config.json``, the tuning's run folder ``consistency/`` (checkpoint, metrics,
loss.png, samples.png: 1 call over 2 calls) and at the end ``checkpoint.pt``.

**progressive** (the default) is progressive distillation (Salimans & Ho 2022): round after
round a student, initialised from its teacher, learns to make in one DDIM step what the teacher
makes in two, so the steps halve each round: --from-steps (64) → 32 → ... → --to-steps. The work
is the library's
(:func:`nets.distillation.distill`; ``nets.distill(DistillConfig(...))`` from Python); this
module parses the flags and turns the library's errors into one line and an exit code.

    python -m nets.distill --teacher runs/<name> --to-steps 4 --max-minutes 20 --run-dir runs/<name>-4
    python -m nets.sample --checkpoint runs/<name>-4            # its 4 DDIM steps, by default

The run folder holds ``config.json``, one folder per round ``steps-32/``, ``steps-16/``, ...
(each a complete checkpoint of that round's student, its ``metrics.jsonl``, ``loss.png`` and a
grid of its digits ``samples.png``: sample any of them with ``nets.sample --checkpoint``), and at
the end ``checkpoint.pt``, the last student. A student predicts v (or x0, --objective): ε is
unstable where the SNR is low, and few-step students start from there. Conditional teachers are
distilled with their labels, a tenth of them dropped to "no label" as in training, so the student
keeps classifier-free guidance.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

from nets import cli
from nets.distillation import DistillConfig, DistilledRun, distill
from nets.distillation.config import DEFAULT_FROM_STEPS, DEFAULT_STEPS_PER_ROUND, resumed_config
from nets.distillation.rounds import describe_end
from nets.fields import choices
from nets.training import distributed


def build_parser() -> cli.Parser:
    d = DistillConfig()
    p = cli.Parser(prog="python -m nets.distill", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=cli.existing_path,
                   help="the run directory (or checkpoint.pt) of the model to distil; a distilled "
                   "student distils on from its own steps")
    p.add_argument("--method", choices=choices(DistillConfig, "method"), default=d.method,
                   help="progressive: rounds halving the DDIM steps; consistency: tune into a "
                   "consistency model (1 or 2 calls; docs/results.md compares them)")
    p.add_argument("--to-steps", type=cli.positive_int, default=d.to_steps,
                   help="progressive: the steps of the last student: --from-steps divided by a power of two")
    p.add_argument("--stages", type=cli.positive_int, default=d.stages,
                   help="consistency: the stages of ECT's schedule, equal parts of the run; Δt = t − r "
                   "halves at each")
    p.add_argument("--time-draw", choices=choices(DistillConfig, "time_draw"), default=d.time_draw,
                   help="consistency: how t is drawn: ECT's log-normal noise level (mostly low noise) "
                   "or uniform over the T indices (the trainer's)")
    p.add_argument("--target", choices=choices(DistillConfig, "target"), default=d.target,
                   help="consistency: x_r of each pair from the data (consistency training: the x0 "
                   "and ε of x_t) or one DDIM step of the teacher from x_t (consistency distillation)")
    p.add_argument("--from-steps", type=cli.int_at_least(2),
                   help=f"progressive: the DDIM steps of the first teacher (default {DEFAULT_FROM_STEPS}; a "
                   f"distilled teacher: its own)")
    p.add_argument("--steps-per-round", type=cli.positive_int,
                   help=f"optimizer steps of each round, and of the consistency tuning's one (default "
                   f"{DEFAULT_STEPS_PER_ROUND}, or as many as --max-minutes allows)")
    p.add_argument("--max-minutes", type=cli.positive_float,
                   help="a wall-clock budget for all rounds together (or the tuning), split evenly "
                   "over the rounds left at each round's start, each with the trainer's planned end (the lr "
                   "decays to 0 as each round's time ends); --steps-per-round still bounds a round")
    p.add_argument("--run-dir", type=cli.directory, help="the folder of the distillation (required)")
    p.add_argument("--resume", type=cli.directory, metavar="RUN_DIR",
                   help="continue an interrupted distillation in its own folder, with its own "
                   "settings (only --device, --precision, --log-every, --checkpoint-every, "
                   "--no-figures, --data-dir, --dist-timeout may change)")
    p.add_argument("--objective", choices=choices(DistillConfig, "objective"), default=d.objective,
                   help="what the student predicts (ε is unstable at low SNR)")
    p.add_argument("--lr", type=cli.positive_float, default=d.lr, help="peak learning rate of each round")
    p.add_argument("--warmup-steps", type=cli.int_at_least(0), default=d.warmup_steps,
                   help="linear lr warm-up of each round, then a cosine to 0")
    p.add_argument("--batch-size", type=cli.positive_int, help="images per step per process "
                   "(default: the teacher's)")
    cli.add_seed(p, "seed of every random draw", d.seed)
    cli.add_data_dir(p, "MNIST folder (default: the teacher's)")
    cli.add_device(p, d.device)
    cli.add_precision(p, "The teacher and the student run under it", d.precision)
    p.add_argument("--log-every", type=cli.positive_int, default=d.log_every, help="steps per log row")
    p.add_argument("--checkpoint-every", type=cli.positive_int, default=d.checkpoint_every,
                   help="steps between a round's checkpoints (and its last step, and a signal)")
    p.add_argument("--no-figures", dest="figures", action="store_false",
                   help="no loss.png / samples.png per round")
    p.add_argument("--dist-timeout", type=cli.positive_float, default=d.dist_timeout,
                   help="under torchrun: seconds a process waits for the others before the job fails")
    return p


def config_from_flags(args: argparse.Namespace, given: dict) -> DistillConfig:
    """The distillation's config: from the flags, or with --resume the saved one with the
    resumable flags given (any other must keep the saved value)."""
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if k != "resume"}
    if args.resume is not None:
        return resumed_config(args.resume, values)
    if args.teacher is None or args.run_dir is None:
        cli.fail("the following arguments are required: --teacher, --run-dir (or --resume RUN_DIR)")
    return DistillConfig(**values)


def main(argv: list[str] | None = None) -> int:
    args, given = cli.given_flags(build_parser(), argv)
    result, code = cli.library_call(lambda: distill(config_from_flags(args, given), args.resume is not None),
                                    "interrupted (Ctrl-C) between rounds; every finished round is saved: "
                                    f"continue with --resume {args.resume or args.run_dir}")
    if result is not None and cli.main_process():
        print_next_steps(result)
    return code


def print_next_steps(result: DistilledRun) -> None:
    print(describe_end(result), file=sys.stderr)
    print(f"next: python -m nets.sample --checkpoint {result.run_dir}   (from Python: "
          f"nets.load(\"{result.run_dir}\").sample(16))", file=sys.stderr)


class _CallableModule(types.ModuleType):
    """``nets.distill`` is this command's module and, from Python, the library call:
    ``nets.distill(DistillConfig(...))`` is :func:`nets.distillation.distill`."""

    def __call__(self, config: DistillConfig, resume: bool = False) -> DistilledRun:
        return distill(config, resume)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    raise SystemExit(distributed.run(main))
