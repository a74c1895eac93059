"""Distilling a trained model down to a few network calls, as library calls that the command
``python -m nets.distill`` is a thin client of: :func:`distill` runs progressive distillation's
rounds or the consistency tuning (each a call of the trainer's ``fit``), :class:`DistillConfig`
says what to do, :class:`DistillationLoss` is one round's objective and :class:`ConsistencyLoss`
the tuning's, on the device (their math: ``diffusion_core.distillation``, ``.consistency``)."""

from nets.distillation.config import DistillConfig
from nets.distillation.consistency import ConsistencyLoss
from nets.distillation.loss import DistillationLoss
from nets.distillation.rounds import DistilledRun
from nets.distillation.run import distill

__all__ = ["ConsistencyLoss", "DistillConfig", "DistillationLoss", "DistilledRun", "distill"]
