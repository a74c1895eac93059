"""Training as one library call: ``nets.fit(TrainConfig(...))`` trains a run and returns it.

    import nets
    run = nets.fit(nets.TrainConfig(max_minutes=10, data_dir="../shared/data/mnist", split="test"))
    nets.load(run).sample(16)                        # a TrainedRun is a path nets.load takes
    nets.resume(run, max_minutes=5)                  # five more minutes, a new budget

:func:`fit` is the whole run: the torchrun world, the run folder, the data, the model (fresh,
resumed, or warm-started from another model's weights), the loop with its checkpoints and
previews, and the figures. It never exits the process: bad input is a ValueError naming the field
(:class:`nets.fields.ConfigError`), a bad checkpoint a :class:`CheckpointError`, missing data a
:class:`MnistUnavailableError`, a diverged run :class:`TrainingFailed`, and a run stopped by
SIGINT/SIGTERM (its checkpoint saved) :class:`RunInterrupted`. ``python -m nets.train`` is flags →
config → fit, and maps those to exit codes. The objective is an argument, so a distillation
round (``nets.distillation``) is a call of fit, not a copy of it.
"""

from __future__ import annotations

import os
import signal as signals
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from nets import device as devices
from nets.checkpoint import CheckpointError, load_checkpoint
from nets.data import DatasetInfo, ImageSet, MnistFormatError, load_dataset, named_set, training_and_held_out
from nets.fields import ConfigError
from nets.files import remove_stale_temp_files, write_json_atomic
from nets.sampling import Network
from nets.training import distributed
from nets.training.config import UNBOUNDED_STEPS, TrainConfig, resumed_config, run_dir_of, saved_config
from nets.training.distributed import World
from nets.training.figures import FIGURE_FILES, make_figures, missing_figures
from nets.training.loop import SIGNAL_EXIT_CODES, train_loop
from nets.training.metrics_log import METRICS_FILE, read_metrics, write_metrics
from nets.training.preview import PREVIEW_FILES, Preview, preview_every
from nets.training.run import TrainingData, TrainingRun, build_run, restore, training_data, wrap_for_training
from nets.training.step import Objective
from nets.unet import UNetConfig, unet_for_data

# written atomically, so a killed write may leave their temp files
RUN_FILES = ("checkpoint.pt", METRICS_FILE, "config.json", *FIGURE_FILES, *PREVIEW_FILES)
END_FIELDS = frozenset({"epochs", "max_steps", "max_minutes"})  # a resume giving one plans anew


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run; its checkpoint at ``step`` is saved (the message says
    how to continue). ``code`` is the exit code by convention: 130 or 143."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signal, self.step = signum, step

    @property
    def code(self) -> int:
        return SIGNAL_EXIT_CODES[self.signal]


class RunFolderPath:
    """A result that is its run folder's path: ``nets.load(result)``, ``str(result)``, ``f"{result}-4"``."""

    run_dir: Path

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __str__(self) -> str:
        return str(self.run_dir)


@dataclass(frozen=True)
class TrainedRun(RunFolderPath):
    """What :func:`fit` returns: the run folder (``nets.load(run)`` takes it), its config, the step
    it is at, the steps this call trained, the training loop's seconds and the previews' share of them."""

    run_dir: Path
    config: TrainConfig
    step: int
    trained_steps: int
    seconds: float
    preview_seconds: float = 0.0


@dataclass(frozen=True)
class Resume:
    """Continue the run in ``config.run_dir`` from its checkpoint; ``moved_end``: its length was
    given anew (--epochs, --max-steps or --max-minutes), so a time budget plans its end again."""

    moved_end: bool = False
    redo_figures: bool = False  # with nothing left to train: draw the figures again, not only missing ones


@dataclass(frozen=True)
class WarmStart:
    """A run whose model and EMA start from ``weights`` (a state dict: a teacher's; a resumed run
    keeps its own), and whose checkpoints carry ``record`` besides the run's own entries."""

    weights: dict
    record: dict


def fit(config: TrainConfig, resume: Resume | None = None, objective: Objective | None = None,
        warm_start: WarmStart | None = None,
        on_start: Callable[[TrainConfig], None] | None = None) -> TrainedRun:
    """Train the run ``config`` describes (or continue it, ``resume``) to its end; ``objective``
    None: the diffusion loss of ``config``; ``on_start``: called (rank 0) with the resolved config
    before the first step (the command prints it). See the module's docstring for what it raises."""
    cfg = replace(config, run_dir=str(run_dir_of(config)))
    world = join_world(cfg.device, cfg.dist_timeout)
    cfg = replace(cfg, batch_size=batch_on(world, cfg, resume), world_size=world.size)
    with run_folder(Path(cfg.run_dir), resume is not None, world):
        run, data = start_run(cfg, world, resume, objective)
        if warm_start is not None:
            start_warm(run, warm_start, resume is None)
        write_config(run)
    if on_start is not None and world.is_main:
        on_start(run.cfg)
    if resume is not None and run.step >= (run.planned_end or data.total_steps):
        world.meet()
        return nothing_to_train(run, data, resume.redo_figures)
    return train_and_draw(run, data)


def start_warm(run: TrainingRun, warm_start: WarmStart, fresh: bool) -> None:
    """The warm start's record on the run's checkpoints; a fresh run's weights and EMA from it."""
    run.record = dict(warm_start.record)
    if fresh:
        run.model.load_state_dict(warm_start.weights)
        run.ema.load_state_dict(warm_start.weights)


def resume(run: str | os.PathLike, **changes) -> TrainedRun:
    """Continue the run in folder ``run`` with its own config, changing only resumable fields
    (the length, the machine, the outputs: ``max_minutes=5`` is five more minutes)."""
    cfg = resumed_config(saved_run_config(run), changes)
    return fit(cfg, Resume(moved_end=bool(END_FIELDS & changes.keys())))


def saved_run_config(run: str | os.PathLike) -> TrainConfig:
    """The config saved in a run folder (or its checkpoint.pt), checked, its ``run_dir`` the
    folder; CheckpointError where the file is not a training run's."""
    path = Path(run)
    if path.is_file() and path.name != "checkpoint.pt":
        raise CheckpointError(f"expected a run directory or its checkpoint.pt, got {path}")
    run_dir = path if path.is_dir() or not path.exists() else path.parent
    saved = load_checkpoint(run_dir)
    if saved.get("distilled") is not None or saved.get("consistency") is not None:
        raise CheckpointError(f"{run_dir} is a round of nets.distill, not a training run; continue a "
                              f"distillation with nets.distill's resume on its folder")
    try:
        return saved_config({**saved["config"], "run_dir": str(run_dir)})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the config saved in {run_dir} is not a training config: {err}") from None


# ---- before the first step ------------------------------------------------------------------------

def join_world(device_name: str, timeout_s: float) -> World:
    """This process's place under torchrun (one process without it) on the named device
    (ConfigError naming ``device`` where there is none such); TF32 on CUDA."""
    try:
        device = devices.pick_device(device_name)
    except ValueError as err:
        raise ConfigError("device", str(err)) from None
    world = distributed.setup(device, timeout_s)
    devices.use_tf32_on_cuda(world.device)
    return world


def batch_on(world: World, cfg: TrainConfig, resume: Resume | None) -> int:
    """The per-process batch: a resumed run keeps its global batch on any number of processes."""
    if resume is None or cfg.world_size == world.size:
        return cfg.batch_size
    try:
        return distributed.per_rank_batch(cfg.batch_size, cfg.world_size, world.size)
    except ValueError as err:
        raise ConfigError("batch_size", str(err)) from None


@contextmanager
def run_folder(run_dir: Path, resuming: bool, world: World) -> Iterator[None]:
    """The run folder, proven writable (rank 0 creates it); a fresh run never reuses a run's
    folder, and one that fails before its first step leaves no folder it created behind."""
    if not resuming and (run_dir / "checkpoint.pt").exists():  # never clobber a run
        raise ConfigError("run_dir", f"{run_dir} already holds a run's checkpoint.pt; continue it "
                          f"with --resume {run_dir} (nets.resume from Python) or choose another folder")
    created = make_writable_dir(run_dir) if world.is_main else []
    try:
        yield
    except BaseException:
        for folder in reversed(created):  # deepest first; a folder holding anything stays
            try:
                (folder / "config.json").unlink(missing_ok=True)
                folder.rmdir()
            except OSError:
                break
        raise


def make_writable_dir(path: Path) -> list[Path]:
    """Create ``path`` and prove it writable now, not after an hour of training; the folders it
    created, outermost first. ConfigError naming ``run_dir`` where it cannot."""
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError("run_dir", f"cannot write to {path}: {err.strerror or err}") from None
    for tmp in remove_stale_temp_files([path / name for name in RUN_FILES]):
        say(f"removed {tmp.name}, left by a write that was killed")
    return missing


def start_run(cfg: TrainConfig, world: World, resume: Resume | None,
              objective: Objective | None) -> tuple[TrainingRun, TrainingData]:
    """The run at its first step to train: data, the model fitted to it, optimizer, restored
    when resuming."""
    try:
        amp = devices.autocast_dtype(cfg.precision, world.device)
    except ValueError as err:
        raise ConfigError("precision", str(err)) from None
    images = read_dataset(cfg, world)
    cfg = model_follows_data(cfg, images.info, world, resumed=resume is not None)
    run = build_run(cfg, world, Path(cfg.run_dir), amp, objective)
    data = load_data(images, cfg, world, run.memory_format)
    run.dataset = images.info.record()
    if cfg.conditional:
        run.class_counts = torch.bincount(data.labels.cpu(), minlength=len(images.info.class_names)).tolist()
    if resume is not None:
        restore_checked(run)
        if resume.moved_end:
            run.planned_end = None  # the run's end was moved: a new budget plans again from here
    if world.is_main:
        report_start(run, data, resume is not None)
    return run, data


def read_dataset(cfg: TrainConfig, world: World) -> ImageSet:
    """The run's dataset, whole (one download, or one decode of a folder, per machine)."""
    with world.local_main_first():
        try:
            images = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.image_size, cfg.channels)
        except MnistFormatError as err:
            if named_set(cfg.dataset) is not None:
                raise  # a named set's file: the message names it
            raise ConfigError("dataset", str(err)) from None  # the folder is the --dataset value
    if world.is_main:
        for note in images.info.notes:
            say(f"data: {note}")
    return images


def model_follows_data(cfg: TrainConfig, info: DatasetInfo, world: World, resumed: bool) -> TrainConfig:
    """``cfg`` with its U-Net fitted to the data (channels, size, classes; levels by size), and
    unconditional for an unlabelled dataset. A resumed run whose data no longer fits its model
    is a ConfigError naming ``dataset``."""
    conditional = cfg.conditional and info.labelled
    if cfg.conditional and not conditional and world.is_main:
        say(f"data: {info.title} has no class folders, so the model is unconditional")
    try:
        unet = unet_for_data(cfg.unet, info.shape, len(info.class_names) if conditional else 0)
    except ValueError as err:
        raise ConfigError("image_size", str(err)) from None
    if resumed and UNetConfig.from_dict(unet) != UNetConfig.from_dict(cfg.unet):  # old dicts may lack keys
        raise ConfigError("dataset", f"{info.describe()} no longer fits the run's model (trained on "
                          f"{cfg.unet['in_channels']}×{cfg.unet['image_size']}² images, "
                          f"{cfg.unet['num_classes']} classes)")
    return replace(cfg, unet=unet, conditional=conditional)


def load_data(images: ImageSet, cfg: TrainConfig, world: World,
              memory_format: torch.memory_format) -> TrainingData:
    """The run's training images on the device (never its held-out ones)."""
    train_rows, held_rows = training_and_held_out(len(images), cfg.limit, cfg.holdout)
    labels = None if images.labels is None else images.labels[train_rows]
    data = training_data(images.images[train_rows], labels, cfg, world, memory_format)
    if world.is_main and cfg.holdout:
        where = images.info.title + ("" if images.info.is_folder else f" {cfg.split}")
        say(f"held out: {where}[{held_rows.start}:{held_rows.stop}] ({cfg.holdout} images), "
            f"never trained on")
    return data


def restore_checked(run: TrainingRun) -> None:
    """``restore`` from the run folder; a checkpoint that lacks or garbles an entry is a
    CheckpointError naming the folder."""
    try:
        restore(run, run.run_dir)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{run.run_dir} is not a complete training checkpoint: "
                              f"{type(err).__name__}: {first}") from None


def write_config(run: TrainingRun) -> None:
    """config.json (rank 0): from here on the folder is a run's."""
    if not run.world.is_main:
        return
    path = run.run_dir / "config.json"
    try:
        write_json_atomic(path, asdict(run.cfg))
    except OSError as err:
        raise ConfigError("run_dir", f"cannot write {path}: {err.strerror or err}") from None


def report_start(run: TrainingRun, data: TrainingData, resumed: bool) -> None:
    """Rank 0's start-up lines: data, batch and lr, the step resumed at, model size, arithmetic."""
    cfg, world = run.cfg, run.world
    steps = "until the clock" if data.total_steps == UNBOUNDED_STEPS else f"{data.total_steps} steps"
    say(f"data: {data.count} images ({data_description(cfg)}), {data.steps_per_epoch} steps/epoch, "
        f"{steps}, device {world.device}")
    say(f"batch: {data.global_batch} images per step = {cfg.batch_size} per process × {world.size} "
        f"process{'es' if world.size > 1 else ''}; peak lr {cfg.lr:g}, never scaled with the "
        f"batch{lr_decay_note(cfg, data.total_steps)}")
    if resumed:
        say(f"resumed from step {run.step}")
    say(f"model: {sum(p.numel() for p in run.model.parameters()):,} parameters")
    fmt = "channels_last" if run.memory_format == torch.channels_last else "contiguous"
    say(f"precision: {devices.describe_precision(run.amp_dtype)} (--precision {cfg.precision} on "
        f"{world.device.type}), {fmt} activations")


def data_description(cfg: TrainConfig) -> str:
    """The dataset and split in a few words: "mnist train", "the folder photos, colour 64×64"."""
    c, size = cfg.unet["in_channels"], cfg.unet["image_size"]
    shape = f"{'grey' if c == 1 else 'colour'} {size}×{size}"
    if named_set(cfg.dataset) is None:
        return f"the folder {cfg.dataset}, {shape}"
    return f"{cfg.dataset} {cfg.split}, {shape}"


def lr_decay_note(cfg: TrainConfig, end: int) -> str:
    """How the lr decays, for the start-up report ('' for a constant lr)."""
    if cfg.lr_schedule == "constant":
        return ""
    if cfg.max_minutes:
        bound = "" if end == UNBOUNDED_STEPS else f" (at most {end})"
        return (f"; {cfg.lr_schedule} decay to 0 at the step the {cfg.max_minutes:g}-minute budget "
                f"reaches{bound}, planned from the pace of the first steps")
    return f"; {cfg.lr_schedule} decay to 0 at step {end}"


# ---- training and after ---------------------------------------------------------------------------

def train_and_draw(run: TrainingRun, data: TrainingData) -> TrainedRun:
    """The loop from the run's step to its end, then (rank 0) the figures."""
    cut_metrics_to_checkpoint(run)
    wrap_for_training(run)
    if run.cfg.preview and run.world.is_main:
        run.preview = start_preview(run, data)
    start = run.step
    end = train_loop(run, data)
    run.world.meet()  # every rank meets here: no rank exits (and so gets the job stopped) early
    if end.signal:
        raise RunInterrupted(f"interrupted at step {end.step}: checkpoint saved; continue with "
                             f"--resume {run.run_dir}", end.signal, end.step)
    if run.world.is_main:
        report_end(run, end.seconds)
        try:
            draw_figures(run, redo=True)
        except KeyboardInterrupt as err:
            raise RunInterrupted(f"interrupted (Ctrl-C) while making the figures; the checkpoint at "
                                 f"step {end.step} is saved", signals.SIGINT, end.step) from err
    previews = run.preview.spent if run.preview is not None else 0.0
    return TrainedRun(run.run_dir, run.cfg, end.step, end.step - start, end.seconds, previews)


def cut_metrics_to_checkpoint(run: TrainingRun) -> None:
    """Drop metrics.jsonl rows after the checkpoint's step (a kill after a log, before a save)."""
    if run.world.is_main:
        path = run.run_dir / METRICS_FILE
        write_metrics(path, read_metrics(path, upto=run.step))


def start_preview(run: TrainingRun, data: TrainingData) -> Preview:
    """Rank 0's live preview of this session, announced."""
    every = preview_every(run.cfg, run.planned_end or data.total_steps)
    net = Network(run.ema, run.diffusion, run.amp_dtype)
    say(f"preview: {run.run_dir / 'preview.png'} and preview-history.png {every.describe()} "
        f"(--no-preview turns them off)")
    sampler = getattr(run.objective, "preview_sampler", None)  # an objective's own, e.g. 1 consistency call
    return Preview(run.run_dir, net, every, run.cfg.seed + 2, run.step, capped=run.cfg.preview_every is None,
                   sampler=sampler)


def report_end(run: TrainingRun, seconds: float) -> None:
    say(f"trained to step {run.step} in {seconds:.1f}s")
    if run.preview is not None and run.preview.written:
        say(f"previews: {run.preview.written} written in {run.preview.spent:.1f}s "
            f"({100 * run.preview.spent / max(seconds, 1e-9):.1f}% of the training time)")


def draw_figures(run: TrainingRun, redo: bool) -> None:
    """The run's figures (all of them, or with ``redo`` False only the missing ones)."""
    if run.cfg.figures and (redo or missing_figures(run.run_dir)):
        make_figures(run.cfg, run.run_dir, run.ema, run.diffusion, run.world.device, run.amp_dtype)
    elif run.cfg.figures:
        say("its figures are there (draw them again with --redo-figures)")


def nothing_to_train(run: TrainingRun, data: TrainingData, redo_figures: bool) -> TrainedRun:
    """A resumed run already at or past its last step: say so, make only missing figures."""
    cfg = run.cfg
    if run.world.is_main:
        if run.planned_end is not None:
            say(f"nothing to train: {run.run_dir} is already at step {run.step}, the end its "
                f"--max-minutes budget planned; give --max-minutes (a new budget) or --max-steps "
                f"to train on")
        else:
            flag = "--max-steps" if cfg.max_steps else "--epochs"
            length = cfg.max_steps or cfg.epochs or data.total_steps // data.steps_per_epoch
            say(f"nothing to train: {run.run_dir} is already at step {run.step} and {flag} {length} "
                f"ends at step {data.total_steps}; give a larger {flag} to train on")
        draw_figures(run, redo_figures)
    return TrainedRun(run.run_dir, run.cfg, run.step, 0, 0.0)


def say(message: str) -> None:
    """One line of the run's report, on stderr (stdout holds the printed config)."""
    print(message, file=sys.stderr, flush=True)
