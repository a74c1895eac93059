"""Writing generated images: an .npz of uint8 images and settings, PNG grids, the reverse figure.

``.npz`` → ``images`` uint8 (N, H, W) grey or (N, H, W, 3) colour, 0 black, 255 white
(``labels`` and ``class_names`` for a conditional model, the settings, ``images_per_second``)
plus a PNG grid of the first 100 beside it; ``.png`` → a grid of all N. A trajectory adds
``trajectory`` uint8 (S, 8, H, W[, 3]), ``trajectory_timesteps`` and ``<name>_reverse.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nets.files import save_npz_atomic
from nets.sampling.batches import Generated

GRID_IMAGES = 100  # the PNG beside an .npz shows this many
OUTPUT_SUFFIXES = (".npz", ".png")


def write_outputs(out: Path, gen: Generated, settings: dict) -> list[Path]:
    """The .npz (+ grid PNG) or the .png grid, and the reverse figure; returns the paths."""
    from nets import figures

    written = []
    if out.suffix == ".npz":
        arrays = {"images": gen.images, "images_per_second": np.float64(gen.images_per_second)}
        arrays.update({k: np.asarray(v) for k, v in settings.items()})
        if gen.labels is not None:
            arrays["labels"] = gen.labels
        if gen.trajectory is not None:
            arrays["trajectory"] = gen.trajectory
            arrays["trajectory_timesteps"] = np.asarray(gen.trajectory_timesteps, np.int64)
        written.append(save_npz_atomic(out, **arrays))
        grid_path = out.with_suffix(".png")
        figures.save_grid(gen.images[:GRID_IMAGES], grid_path, ncol=10)
    else:
        grid_path = out
        out.parent.mkdir(parents=True, exist_ok=True)
        figures.save_grid(gen.images, grid_path)
    written.append(grid_path)
    if gen.trajectory is not None:
        reverse_path = out.with_name(f"{out.stem}_reverse.png")
        figures.plot_reverse(gen.trajectory, gen.trajectory_timesteps, reverse_path)
        written.append(reverse_path)
    return written
