"""A distillation as one library call, either method: ``nets.distill(DistillConfig(...))``.

``method="progressive"`` (the default): rounds of progressive distillation, each halving the DDIM
steps (``nets.distillation.rounds``). ``method="consistency"``: consistency tuning, one run that
turns the teacher into a consistency model sampling in one or two calls
(``nets.distillation.consistency``). Either is calls of the trainer's ``fit``; errors are the
trainer's: ValueError (ConfigError naming the field, CheckpointError for a bad teacher),
RunInterrupted (its progress saved), TrainingFailed.
"""

from __future__ import annotations

from nets.distillation.config import DistillConfig
from nets.distillation.consistency import tune
from nets.distillation.rounds import DistilledRun, prepare, progressive


def distill(config: DistillConfig, resume: bool = False) -> DistilledRun:
    """Run (or, ``resume``, continue) the distillation ``config`` describes."""
    cfg, world, run_dir = prepare(config, resume)
    if cfg.method == "consistency":
        return tune(cfg, world, run_dir)
    return progressive(cfg, world, run_dir)
