"""What one training run holds: its data on the device, the model, EMA and optimizer, the
random streams, the step reached; built fresh or restored from the run's checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nets.checkpoint import load_checkpoint, load_weights
from nets.device import memory_format_for
from nets.diffusion import Diffusion, make_schedule
from nets.fields import ConfigError
from nets.pixels import to_training_tensor
from nets.training.config import TrainConfig, total_steps
from nets.training.distributed import World
from nets.training.step import Learner, Objective
from nets.unet import UNet, UNetConfig

if TYPE_CHECKING:
    from nets.training.preview import Preview


@dataclass
class TrainingData:
    """The whole split as one tensor on the device, and how steps walk through it."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1], in the run's memory format
    labels: torch.Tensor  # (N,) int64
    global_batch: int  # images per optimizer step over all ranks
    steps_per_epoch: int
    total_steps: int

    @property
    def count(self) -> int:
        return len(self.images)


def training_data(images: np.ndarray, labels: np.ndarray | None, cfg: TrainConfig, world: World,
                  memory_format: torch.memory_format) -> TrainingData:
    """``images`` in the pixel layout (already cut to --limit) and their ``labels`` (None:
    unlabelled, all 0) on the device; ValueError if one step needs more images than there are."""
    n = len(images)
    global_batch = cfg.batch_size * world.size  # per step; each rank trains on cfg.batch_size of it
    if global_batch > n:
        raise ConfigError("batch_size", f"{cfg.batch_size}"
                          + (f" × {world.size} processes" if world.size > 1 else "")
                          + f" exceeds the {n} training images")
    tensor = to_training_tensor(images, world.device).contiguous(memory_format=memory_format)
    labels = torch.as_tensor(np.zeros(n, np.int64) if labels is None else np.asarray(labels, dtype=np.int64),
                             device=world.device)
    steps_per_epoch = n // global_batch
    return TrainingData(tensor, labels, global_batch, steps_per_epoch,
                        total_steps(cfg, steps_per_epoch))


@dataclass
class TrainingRun:
    """The state the loop advances; :meth:`checkpoint_state` is what a checkpoint holds."""

    cfg: TrainConfig
    world: World
    run_dir: Path
    diffusion: Diffusion  # the model's schedule and objective: previews and figures sample with it
    objective: Objective  # what the steps minimise: ``diffusion`` itself, or e.g. a distillation loss
    model: UNet
    ema: UNet
    forward: torch.nn.Module  # model, under DDP and/or torch.compile when asked
    optimizer: torch.optim.Optimizer
    gen: torch.Generator  # t, ε and label dropout, the same stream on every rank
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    step: int = 0
    class_counts: list[int] | None = None  # training images per class: nets.sample's label frequencies
    dataset: dict | None = None  # what it trains on (nets.data.DatasetInfo.record), kept in checkpoints
    planned_end: int | None = None  # the last step the --max-minutes budget fixed (nets.training.budget)
    preview: Preview | None = None  # rank 0's live preview, if any
    record: dict = field(default_factory=dict)  # more entries for the checkpoint (a distilled student's)

    @property
    def learner(self) -> Learner:
        """What the next optimizer step uses: ``forward`` as wrapped by :func:`wrap_for_training`."""
        return Learner(self.forward, self.model, self.ema, self.optimizer, self.objective, self.amp_dtype)

    def checkpoint_state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "config": asdict(self.cfg), "class_counts": self.class_counts, "dataset": self.dataset,
                "planned_end": self.planned_end,
                "rng": {"generator": self.gen.get_state(), "torch": torch.get_rng_state()},
                **self.record}


def build_run(cfg: TrainConfig, world: World, run_dir: Path, amp_dtype: torch.dtype | None,
              objective: Objective | None = None) -> TrainingRun:
    """A fresh run at step 0: seeded weights (the same on every rank), EMA = weights, AdamW;
    ``objective`` None: the diffusion loss of ``cfg``."""
    device = world.device
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    diffusion = Diffusion(make_schedule(cfg.schedule, cfg.timesteps), cfg.objective,
                          cfg.loss_weighting, cfg.min_snr_gamma).to(device)
    fmt = memory_format_for(device, amp_dtype)
    model = UNet(UNetConfig.from_dict(cfg.unet)).to(device, memory_format=fmt)
    ema = UNet(UNetConfig.from_dict(cfg.unet)).to(device, memory_format=fmt)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    return TrainingRun(cfg, world, run_dir, diffusion, objective or diffusion, model, ema, model,
                       optimizer, gen, amp_dtype, fmt)


def restore(run: TrainingRun, resume_dir: Path) -> None:
    """Load weights, EMA, optimizer, random streams and step from ``resume_dir``'s checkpoint.

    Raises CheckpointError for an unreadable or mismatched file, and KeyError, TypeError,
    ValueError, RuntimeError or AttributeError for a checkpoint that lacks or garbles an entry.
    """
    state = load_checkpoint(resume_dir, map_location=run.world.device)
    load_weights(run.model, state["model"], f"model weights in {resume_dir}")
    load_weights(run.ema, state["ema"], f"EMA weights in {resume_dir}")
    run.optimizer.load_state_dict(state["optimizer"])
    run.gen.set_state(state["rng"]["generator"].cpu())
    torch.set_rng_state(state["rng"]["torch"].cpu())
    run.step = int(state["step"])
    planned = state.get("planned_end")  # absent before time budgets fixed the end
    if planned is not None and (not isinstance(planned, int) or planned < 1):
        raise ValueError(f"planned_end must be a positive step, got {planned!r}")
    run.planned_end = planned


def wrap_for_training(run: TrainingRun) -> None:
    """DDP under torchrun, then torch.compile when asked; own dropout streams per rank."""
    if run.world.size > 1:  # dropout masks: each rank its own stream, or all ranks would share them
        from nets.training.distributed import rank_seed
        torch.manual_seed(rank_seed(run.cfg.seed, run.world.rank, run.step))
    forward = run.world.wrap(run.model)  # DistributedDataParallel under torchrun
    run.forward = torch.compile(forward) if run.cfg.compile else forward
