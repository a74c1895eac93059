"""Train a DDPM on MNIST: ``python -m nets.train``.

Reads top to bottom: config → data → model → optimizer → loop → checkpoint → figures. The work
lives in ``nets.training``; this module parses the flags, resolves a resumed run's config, and
reports. Every run directory ends up holding ``checkpoint.pt`` (raw and EMA weights, optimizer,
RNG states, the resolved config), ``metrics.jsonl`` (one row per step), ``config.json`` and the
seed report's three figures: ``loss.png``, ``samples.png`` and ``reverse.png``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from nets import cli
from nets.checkpoint import CheckpointError
from nets.data import MnistArrays, training_and_held_out
from nets.device import describe_precision, use_tf32_on_cuda
from nets.files import remove_stale_temp_files, write_json_atomic
from nets.pixels import NUM_CLASSES
from nets.sampling import Network
from nets.training import distributed
from nets.training.config import UNBOUNDED_STEPS, TrainConfig
from nets.training.distributed import World
from nets.training.figures import FIGURE_FILES, make_figures, missing_figures
from nets.training.flags import config_from_args, end_flags_given
from nets.training.loop import SIGNAL_EXIT_CODES, TrainingFailed, train_loop
from nets.training.metrics_log import METRICS_FILE, read_metrics, write_metrics
from nets.training.preview import PREVIEW_FILES, Preview, preview_every
from nets.training.run import TrainingData, TrainingRun, build_run, restore, training_data, wrap_for_training

# written atomically, so a killed write may leave their temp files
RUN_FILES = ("checkpoint.pt", METRICS_FILE, "config.json", *FIGURE_FILES, *PREVIEW_FILES)


def join_world(cfg: TrainConfig, resume_dir: Path | None) -> World:
    """This process's place under torchrun (one process without it) on the --device; a resumed
    run keeps its global batch on any number of processes."""
    device = cli.device_from_flag(cfg.device)
    try:
        world = distributed.setup(device, cfg.dist_timeout)
    except ValueError as err:
        cli.fail(str(err))
    if resume_dir is not None and cfg.world_size != world.size:
        try:
            cfg.batch_size = distributed.per_rank_batch(cfg.batch_size, cfg.world_size, world.size)
        except ValueError as err:
            cli.fail(f"--resume: {err}")
    cfg.world_size = world.size
    use_tf32_on_cuda(world.device)
    return world


def prepare_run_dir(cfg: TrainConfig, resume_dir: Path | None, world: World) -> Path:
    """The run directory, proven writable, cleared of the temp files a killed write left, holding
    config.json; rank 0 alone prints the config and writes (a fresh run never reuses a run's
    folder)."""
    run_dir = Path(cfg.run_dir)
    if resume_dir is None and (run_dir / "checkpoint.pt").exists():  # never clobber a run
        cli.fail(f"--run-dir: {cfg.run_dir} already holds a run's checkpoint.pt; continue it with "
                 f"--resume {cfg.run_dir} or choose another --run-dir")
    if not world.is_main:
        return run_dir
    cli.ensure_writable_dir(run_dir, "--run-dir")
    for tmp in remove_stale_temp_files([run_dir / name for name in RUN_FILES]):
        print(f"removed {tmp.name}, left by a write that was killed", file=sys.stderr)
    print(json.dumps(asdict(cfg), indent=1))
    try:
        write_json_atomic(run_dir / "config.json", asdict(cfg))
    except OSError as err:
        cli.fail(f"--run-dir: cannot write {run_dir / 'config.json'}: {err.strerror or err}")
    return run_dir


def load_data(cfg: TrainConfig, world: World, memory_format) -> TrainingData:
    with world.local_main_first():  # one download per machine
        arrays = cli.mnist_or_exit(cfg.data_dir, cfg.split)
    try:
        train_rows, held_rows = training_and_held_out(len(arrays), cfg.limit, cfg.holdout)
        data = training_data(MnistArrays(arrays.images[train_rows], arrays.labels[train_rows]), cfg,
                             world, memory_format)
    except ValueError as err:
        cli.fail(str(err))
    if world.is_main and cfg.holdout:
        print(f"held out: MNIST {cfg.split}[{held_rows.start}:{held_rows.stop}] ({cfg.holdout} images), "
              f"never trained on", file=sys.stderr)
    if world.is_main:
        steps = "until the clock" if data.total_steps == UNBOUNDED_STEPS else f"{data.total_steps} steps"
        print(f"data: {data.count} images ({cfg.split}), {data.steps_per_epoch} steps/epoch, "
              f"{steps}, device {world.device}", file=sys.stderr)
        print(f"batch: {data.global_batch} images per step = {cfg.batch_size} per process × "
              f"{world.size} process{'es' if world.size > 1 else ''}; peak lr {cfg.lr:g}, never "
              f"scaled with the batch{lr_decay_note(cfg, data.total_steps)}", file=sys.stderr)
    return data


def lr_decay_note(cfg: TrainConfig, end: int) -> str:
    """How the lr decays, for the start-up report ('' for a constant lr)."""
    if cfg.lr_schedule == "constant":
        return ""
    if cfg.max_minutes:
        bound = "" if end == UNBOUNDED_STEPS else f" (at most {end})"
        return (f"; {cfg.lr_schedule} decay to 0 at the step the {cfg.max_minutes:g}-minute budget "
                f"reaches{bound}, planned from the pace of the first steps")
    return f"; {cfg.lr_schedule} decay to 0 at step {end}"


def resume_or_report(run: TrainingRun, resume_dir: Path | None) -> None:
    """Restore ``run`` from ``resume_dir`` when resuming (exit 2 on a bad checkpoint); rank 0
    reports the step, the model's size and the arithmetic."""
    if resume_dir is not None:
        try:
            restore(run, resume_dir)
        except CheckpointError as err:
            cli.fail(f"--resume: {err}")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            cli.fail(f"--resume: {resume_dir} is not a complete training checkpoint: "
                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if run.world.is_main:
        if resume_dir is not None:
            print(f"resumed from step {run.step}", file=sys.stderr)
        print(f"model: {sum(p.numel() for p in run.model.parameters()):,} parameters",
              file=sys.stderr)
        fmt = "channels_last" if run.memory_format == torch.channels_last else "contiguous"
        print(f"precision: {describe_precision(run.amp_dtype)} (--precision {run.cfg.precision} on "
              f"{run.world.device.type}), {fmt} activations", file=sys.stderr)


def cut_metrics_to_checkpoint(run: TrainingRun) -> None:
    """Drop metrics.jsonl rows after the checkpoint's step (a kill after a log, before a save)."""
    if not run.world.is_main:
        return
    path = run.run_dir / METRICS_FILE
    try:
        write_metrics(path, read_metrics(path, upto=run.step))
    except OSError as err:
        cli.fail(f"--run-dir: cannot write {path}: {err.strerror or err}")


def nothing_to_train(run: TrainingRun, data: TrainingData, redo_figures: bool) -> int:
    """A resumed run already at or past its last step: say so, make only missing figures."""
    cfg = run.cfg
    if not run.world.is_main:
        return 0
    if run.planned_end is not None:
        print(f"nothing to train: {run.run_dir} is already at step {run.step}, the end its "
              f"--max-minutes budget planned; give --max-minutes (a new budget) or --max-steps "
              f"to train on", file=sys.stderr)
    else:
        flag = "--max-steps" if cfg.max_steps else "--epochs"
        print(f"nothing to train: {run.run_dir} is already at step {run.step} and "
              f"{flag} {cfg.max_steps or cfg.epochs} ends at step {data.total_steps}; give a larger "
              f"{flag} to train on", file=sys.stderr)
    missing = missing_figures(run.run_dir)
    if cfg.figures and (missing or redo_figures):
        make_figures(cfg, run.run_dir, run.ema, run.diffusion, run.world.device, run.amp_dtype)
    elif cfg.figures:
        print("its figures are there (draw them again with --redo-figures)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ---- config -------------------------------------------------------------------------------
    cfg, resume_dir, args = config_from_args(argv)
    try:
        world = join_world(cfg, resume_dir)
        run_dir = prepare_run_dir(cfg, resume_dir, world)
        # ---- model, diffusion, optimizer; then data in the model's memory format -------------
        run = build_run(cfg, world, run_dir, cli.autocast_from_flag(cfg.precision, world.device))
        data = load_data(cfg, world, run.memory_format)
        run.class_counts = torch.bincount(data.labels.cpu(), minlength=NUM_CLASSES).tolist()
        resume_or_report(run, resume_dir)
        if resume_dir is not None and end_flags_given(args):
            run.planned_end = None  # the run's end was moved: a new budget plans again from here
    except KeyboardInterrupt:
        cli.exit_after_interrupt("interrupted (Ctrl-C) before training started; nothing to save")
    if resume_dir is not None and run.step >= (run.planned_end or data.total_steps):
        world.leave()
        return nothing_to_train(run, data, args.redo_figures)
    cut_metrics_to_checkpoint(run)
    wrap_for_training(run)
    if cfg.preview and world.is_main:
        run.preview = start_preview(run, data)

    # ---- the loop, with its checkpoints --------------------------------------------------------
    try:
        end = train_loop(run, data)
    except TrainingFailed as err:
        if not world.is_main:
            raise SystemExit(1) from None  # every rank saw the same losses; rank 0 says why
        cli.fail(str(err), code=1)
    world.leave()  # every rank meets here: no rank exits (and so gets the job stopped) early
    if end.signal:
        if world.is_main:
            print(f"interrupted at step {end.step}: checkpoint saved; continue with "
                  f"--resume {run_dir}", file=sys.stderr)
        return SIGNAL_EXIT_CODES[end.signal]
    if world.is_main:
        print(f"trained to step {end.step} in {end.seconds:.1f}s", file=sys.stderr)
        if run.preview is not None and run.preview.written:
            print(f"previews: {run.preview.written} written in {run.preview.spent:.1f}s "
                  f"({100 * run.preview.spent / max(end.seconds, 1e-9):.1f}% of the training time)",
                  file=sys.stderr)

    # ---- figures (rank 0 alone) ----------------------------------------------------------------
    if cfg.figures and world.is_main:
        try:
            make_figures(cfg, run_dir, run.ema, run.diffusion, world.device, run.amp_dtype)
        except KeyboardInterrupt:
            cli.exit_after_interrupt(f"interrupted (Ctrl-C) while making the figures; the checkpoint "
                                     f"at step {end.step} is saved")
    if world.is_main:
        print_next_steps(cfg, run_dir)
    return 0


def start_preview(run: TrainingRun, data: TrainingData) -> Preview:
    """Rank 0's live preview of this session, announced."""
    every = preview_every(run.cfg, run.planned_end or data.total_steps)
    net = Network(run.ema, run.diffusion, run.amp_dtype)
    print(f"preview: {run.run_dir / 'preview.png'} and preview-history.png {every.describe()} "
          f"(--no-preview turns them off)", file=sys.stderr)
    return Preview(run.run_dir, net, every, run.cfg.seed + 2, run.step, capped=run.cfg.preview_every is None)


def print_next_steps(cfg: TrainConfig, run_dir: Path) -> None:
    """The run's last lines: where its files are, and the next command."""
    made = [name for name in FIGURE_FILES if (run_dir / name).exists()]
    if made:
        print(f"figures: {', '.join(str(run_dir / name) for name in made)}", file=sys.stderr)
    ask = " --digit 7 --guidance 2" if cfg.conditional else ""
    print(f"next: python -m nets.sample --checkpoint {run_dir}{ask}   (from Python: "
          f"nets.load(\"{run_dir}\").sample(16))", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(distributed.run(main))
