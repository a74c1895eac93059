"""Distilling a trained model down to a few network calls, as library calls that the command
``python -m nets.distill`` is a thin client of: :func:`distill` runs the rounds (each a call of
the trainer's ``fit``), :class:`DistillConfig` says what to do, :class:`DistillationLoss` is one
round's objective on the device (its math is ``diffusion_core.distillation``)."""

from nets.distillation.config import DistillConfig
from nets.distillation.loss import DistillationLoss
from nets.distillation.rounds import DistilledRun, distill

__all__ = ["DistillConfig", "DistillationLoss", "DistilledRun", "distill"]
