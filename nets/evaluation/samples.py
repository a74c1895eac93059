"""The samples file ``nets.evaluate`` reads: an .npz with uint8 ``images`` (N, H, W) or
(N, H, W, 3) as ``nets.sample`` writes it, its scalar settings, and (conditional models) the
requested labels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from nets.pixels import IMAGE_SHAPE, NUM_CLASSES, describe_layout, in_layout


class SamplesError(ValueError):
    """An .npz of samples that cannot be evaluated."""


# ---------------------------------------------------------------------------------------------
# Inputs


def load_samples(path: str | Path) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """``images`` uint8 (N ≥ 2, H, W[, 3]), the scalar settings saved beside it by nets.sample, and
    the requested ``labels`` (N,) of a conditional model's samples (None when absent)."""
    path = Path(path)
    images, labels, meta = _read_archive(path)
    check_arrays(path, images, labels, None, None)
    return images, meta, labels


def _read_archive(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(images, labels or None, scalar settings) of an .npz, unchecked; SamplesError if unreadable."""
    if not path.is_file():
        raise SamplesError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise SamplesError(f"{path} is empty")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise SamplesError(f"{path} is not a readable .npz archive: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                           ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SamplesError(f"{path} is a single .npy array, not an .npz archive with an "
                           f"'images' array")
    with archive:
        if "images" not in archive.files:
            raise SamplesError(f"{path} has no 'images' array (it holds: "
                               f"{', '.join(archive.files) or 'nothing'})")
        try:
            images = archive["images"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise SamplesError(f"{path}: 'images' cannot be read: {err}") from None
        labels = None
        if "labels" in archive.files:
            try:
                labels = archive["labels"]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                raise SamplesError(f"{path}: 'labels' cannot be read: {err}") from None
        meta = {}
        for key in archive.files:
            if key in ("images", "labels", "trajectory", "trajectory_timesteps"):
                continue
            try:
                value = archive[key]
            except (ValueError, OSError):
                continue
            if value.ndim == 0 and value.dtype.kind in "biufU":
                meta[key] = value.item()
    return images, labels, meta


def check_arrays(path: Path, images: np.ndarray, labels: np.ndarray | None,
                 shape: tuple[int, int, int] | None = IMAGE_SHAPE,
                 num_classes: int | None = NUM_CLASSES) -> None:
    """SamplesError unless ``images`` are uint8 (N ≥ 2) of network shape ``shape`` in the pixel
    layout (None: any (N, H, W) or (N, H, W, 3)) and ``labels`` are classes 0..num_classes-1
    (None: any non-negative integers)."""
    if images.dtype != np.uint8:
        raise SamplesError(f"{path}: 'images' must be uint8 (0 black, 255 white), got "
                           f"{images.dtype} (nets.pixels.images_to_uint8 converts [-1, 1] floats)")
    if not in_layout(images, shape):
        raise SamplesError(f"{path}: 'images' must have shape {describe_layout(shape)}, got {images.shape}")
    if len(images) < 2:
        raise SamplesError(f"{path}: need at least 2 images for a covariance, got {len(images)}")
    top = np.inf if num_classes is None else num_classes
    if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != (len(images),)
                               or labels.min() < 0 or labels.max() >= top):
        which = "non-negative integers" if num_classes is None else f"integers 0-{num_classes - 1}"
        raise SamplesError(f"{path}: 'labels' must be {which} of shape "
                           f"({len(images)},), got {labels.dtype} {labels.shape}")
