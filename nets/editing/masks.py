"""Which pixels of an image are known: named masks and mask files (True = known, kept as given)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nets.pixels import IMAGE_SIZE

MASKS = ("left", "right", "top", "bottom", "center", "random")


def named_mask(name: str, seed: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) bool known-pixel mask: ``left`` keeps the left half (the right is filled in),
    ``right``/``top``/``bottom`` likewise, ``center`` keeps all but the middle half-size square
    (14×14 of 28×28), ``random`` keeps a seeded half of the pixels."""
    n, h = size, size // 2
    known = np.zeros((n, n), dtype=bool)
    if name == "left":
        known[:, :h] = True
    elif name == "right":
        known[:, h:] = True
    elif name == "top":
        known[:h] = True
    elif name == "bottom":
        known[h:] = True
    elif name == "center":
        known[:] = True
        known[n // 4: n // 4 + h, n // 4: n // 4 + h] = False
    elif name == "random":
        known = np.random.default_rng(seed).random((n, n)) < 0.5
    else:
        raise ValueError(f"unknown mask {name!r} (use {', '.join(MASKS)} or --mask-file)")
    return known


def mask_from_png(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """A size × size black-and-white PNG: white = known. ValueError if not that."""
    import matplotlib.image

    try:
        image = np.asarray(matplotlib.image.imread(path))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{path} is not a readable PNG: {err}") from None
    if image.ndim == 3:
        image = image[..., :3].mean(-1) if image.shape[-1] in (3, 4) else image[..., 0]
    if image.shape != (size, size):
        raise ValueError(f"{path} is {image.shape[1] if image.ndim > 1 else '?'}×{image.shape[0]}, "
                         f"not the model's {size}×{size}")
    values = np.unique(image)
    if not np.all(np.isin(values, (0.0, 1.0))):
        raise ValueError(f"{path} is not black and white only (it holds {len(values)} grey levels)")
    return image == 1.0
