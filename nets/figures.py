"""The three figures of the seed report, drawn with matplotlib (Agg, no screen needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nets.files import atomic_write  # noqa: E402


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W) or (N, H, W, 3) into one (rows·(H+pad)+pad, cols·(W+pad)+pad)
    uint8 array (with the images' trailing colour axis)."""
    n, h, w = images.shape[:3]
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    grid = np.zeros((nrows * (h + pad) + pad, ncol * (w + pad) + pad, *images.shape[3:]), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: Path, ncol: int | None = None, scale: int = 3) -> None:
    """F2: a grid of generated images as a PNG (grey ones white on black, as MNIST; colour ones
    in colour)."""
    grid = image_grid(images, ncol)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour upscale
    atomic_write(path, lambda f: plt.imsave(f, grid, format="png", **gray_or_colour(grid)))


def gray_or_colour(image: np.ndarray) -> dict:
    """imshow/imsave's arguments for a uint8 image: the grey colour map for (H, W), none for RGB."""
    return {"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}


def smoothed(values: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential average (Kingma & Ba 2015, Adam's m̂): at step i the weighted
    mean Σ_j β^(i-j) v_j / Σ_j β^(i-j) of the values so far, so the curve follows the data from
    the first step instead of lagging behind a start value."""
    out = np.empty(len(values), dtype=np.float64)
    m = 0.0
    for i, value in enumerate(values):
        m = beta * m + (1 - beta) * value
        out[i] = m / (1 - beta ** (i + 1))
    return out


def plot_loss(steps: np.ndarray, losses: np.ndarray, epochs: np.ndarray, path: Path,
              title: str = "Training loss") -> None:
    """F1: per-step loss, its bias-corrected exponential average, and each epoch's mean marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="per-step loss")
    ax.plot(steps, smoothed(losses, 0.98), color="tab:blue", lw=1.8,
            label="smoothed (bias-corrected EMA 0.98)")
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        ax.plot(steps[sel].mean(), losses[sel].mean(), "o", color="tab:red", ms=5,
                label="epoch mean" if epoch == epochs.min() else None)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path, dpi=110)


def plot_reverse(snapshots: np.ndarray, steps: list[int], path: Path) -> None:
    """F3: chains (rows) from pure noise (left, t = T) to the digit (right, t = 0).

    ``snapshots`` is uint8 (S, N, H, W) or (S, N, H, W, 3): S moments of N chains; ``steps``
    labels each column.
    """
    s, n = snapshots.shape[:2]
    fig, axes = plt.subplots(n, s, figsize=(s * 0.9, n * 0.9 + 0.3), squeeze=False)
    for col in range(s):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(snapshots[col, row], **gray_or_colour(snapshots[col, row]))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title(f"t={steps[col]}", fontsize=8)
    fig.suptitle("Reverse diffusion: noise → image", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=100)


def save_digit_rows(path: Path, rows: list[tuple[str, np.ndarray]], title: str | None = None,
                    fontsize: int = 8) -> None:
    """One row of uint8 images (N, H, W[, 3]) per (label, images) of ``rows``, labelled on the left:
    the editing figures (original / latent / decoded) and the studies' sample rows."""
    width = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(4, width * 0.45), 0.68 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows, strict=True):
        grid = image_grid(np.asarray(images), len(images))
        ax.imshow(grid, **gray_or_colour(grid))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    _save(fig, path, dpi=110, bbox_inches="tight")


def _save(fig, path: Path, **kwargs) -> None:
    """A figure as a PNG, written atomically (a preview read while it is written is never torn)."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", **kwargs))
    plt.close(fig)
