"""Any dataset as one record: ``load_dataset("mnist" | "fashion-mnist" | "kmnist" | "cifar10" |
"<folder>")`` gives its images in the package's pixel layout, its labels and what it is.

Pixel layout (``nets.pixels``): uint8, 0 = black; (N, H, W) for one channel and (N, H, W, 3) for
colour, the layout ``.npz`` samples are saved in. A named set is read at its own size unless
``image_size`` or ``channels`` asks for another (resized with Pillow's bicubic filter; colour ↔
grey as a folder's images are, ``nets.data.folder``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nets.data.catalog import NAMED_SETS, NAMES, named_set
from nets.data.cifar10 import load_cifar10
from nets.data.folder import load_folder, square
from nets.data.idx import MnistFormatError
from nets.data.mnist import MnistUnavailableError, load_idx_set
from nets.fields import ConfigError

DATA_ERRORS = (MnistUnavailableError, MnistFormatError)  # missing data; data that cannot be read


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: ``name`` (a set's name, or the folder as given), ``title`` for messages,
    image ``shape`` (C, H, W), ``class_names`` (empty: unlabelled), and the conversions its
    images needed (said once)."""

    name: str
    title: str
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    @property
    def is_folder(self) -> bool:
        return named_set(self.name) is None

    def describe(self) -> str:
        c, h, w = self.shape
        kind = f"{len(self.class_names)} classes" if self.labelled else "unlabelled"
        return f"{self.title}: {'grey' if c == 1 else 'colour'} {h}×{w}, {kind}"

    def record(self) -> dict:
        """What a checkpoint keeps of it (``dataset_from_record`` reads it back)."""
        return {"name": self.name, "title": self.title, "shape": list(self.shape),
                "class_names": list(self.class_names)}


MNIST_INFO = DatasetInfo("mnist", "MNIST", (1, 28, 28), NAMED_SETS["mnist"].class_names)


@dataclass(frozen=True)
class ImageSet:
    """One split: ``images`` in the pixel layout (read-only), ``labels`` (N,) or None, ``info``."""

    images: np.ndarray
    labels: np.ndarray | None
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.images)


def load_dataset(dataset: str = "mnist", data_dir: str | os.PathLike[str] | None = None,
                 split: str = "train", image_size: int | None = None, channels: int | None = None,
                 download: bool = True) -> ImageSet:
    """The ``split`` of a named set (its files in ``data_dir``, downloaded when missing) or the
    images of the folder ``dataset`` (``split`` does not apply), at ``image_size`` with
    ``channels`` (None: the data's own). ConfigError("dataset") for a name that is neither;
    the data layer's errors (DatasetUnavailableError, MnistFormatError) as raised."""
    spec = named_set(str(dataset))
    if spec is None:
        return _folder_set(str(dataset), image_size, channels)
    if spec.format == "idx":
        arrays = load_idx_set(spec, data_dir, split, download)
    else:
        arrays = load_cifar10(data_dir, split, download)
    images = resized(arrays.images, image_size or spec.shape[1], channels or spec.shape[0])
    c = channels or spec.shape[0]
    info = DatasetInfo(spec.name, spec.title, (c, images.shape[1], images.shape[2]), spec.class_names)
    return ImageSet(images, arrays.labels, info)


def _folder_set(folder: str, image_size: int | None, channels: int | None) -> ImageSet:
    if not Path(folder).expanduser().is_dir():
        raise ConfigError("dataset", f"{folder!r} is neither a dataset name ({', '.join(NAMES)}) nor a "
                          f"folder of images")
    got = load_folder(folder, image_size, channels)
    shape = (got.look.channels, got.look.size, got.look.size)
    info = DatasetInfo(folder, f"the folder {folder}", shape, got.scan.class_names,
                       got.look.notes if not got.from_cache else ())
    return ImageSet(got.images, got.labels, info)


def resized(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Images in the pixel layout at ``size`` × ``size`` with ``channels``; unchanged (the same
    array) when they already are."""
    have = 1 if images.ndim == 3 else images.shape[-1]
    if images.shape[1:3] == (size, size) and have == channels:
        return images
    mode = "L" if channels == 1 else "RGB"
    out = np.stack([np.asarray(square(Image.fromarray(img).convert(mode), size), dtype=np.uint8)
                    for img in images])
    out.setflags(write=False)
    return out
