"""Autoguidance: guide a model with a worse version of itself (Karras et al. 2024, eq. 2).

    D_w(x; t) = D_guide(x; t) + w · (D_main(x; t) − D_guide(x; t))

where the guide is the same kind of model, smaller or less trained (here: an early checkpoint of
the same run, ``nets.train --keep-checkpoints``). Unlike classifier-free guidance it needs no
labels, so it applies to an unconditional model. The combination may be taken on ε, x̂0 or v
alike: each is an affine function of the other at fixed (x_t, t), with the same coefficients for
both models, and the weights (1 − w, w) sum to one. w = 1 is the main model alone.
"""

from __future__ import annotations

import torch
from torch import nn


class AutoGuided(nn.Module):
    """``main`` guided by ``guide`` with weight ``w``; called like the U-Net, ``config`` is main's."""

    def __init__(self, main: nn.Module, guide: nn.Module, w: float):
        super().__init__()
        self.main, self.guide, self.w = main, guide, float(w)
        self.config = main.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        args = (x, t) if y is None else (x, t, y)
        guide = self.guide(*args)
        return guide + self.w * (self.main(*args) - guide)


def check_guide_matches(main_config: dict, guide_config: dict) -> None:
    """ValueError unless the guide predicts the same quantity on the same schedule and labels."""
    defaults = {"objective": "eps", "conditional": False}  # checkpoints older than the keys
    for key in ("schedule", "timesteps", "objective", "conditional"):
        ours, theirs = (c.get(key, defaults.get(key)) for c in (main_config, guide_config))
        if ours != theirs:
            raise ValueError(f"the guide model's {key} is {theirs!r}, the model's {ours!r}: "
                             f"guidance mixes their predictions, so they must share schedule, T, "
                             f"objective and conditioning")
