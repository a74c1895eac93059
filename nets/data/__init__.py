"""Datasets on disk: the sets known by name (``catalog``: MNIST, Fashion-MNIST, KMNIST, CIFAR-10),
the IDX reader (``idx``), what each file must match (``checksums``), mirror downloads
(``fetch``), MNIST-format splits found or downloaded and cut into training and held-out rows
(``mnist``), CIFAR-10's binary batches (``cifar10``), folders of images (``folder``), and the one
record for all of them (``dataset``). Pixel conversion is :mod:`nets.pixels`.

The names below are the public surface; ``from nets.data import load_dataset`` is the usual call.
"""

from nets.data.catalog import NAMED_SETS, NAMES, NamedSet, named_set
from nets.data.checksums import MNIST_CHECKSUMS, FileChecksum
from nets.data.dataset import MNIST_INFO, DatasetInfo, ImageSet, load_dataset  # noqa: E402
from nets.data.fetch import DEFAULT_MIRRORS, MIRRORS_ENV, mnist_mirrors
from nets.data.idx import MAX_PAYLOAD_BYTES, MnistFormatError, read_idx
from nets.data.mnist import (
    DATA_DIR_ENV,
    MNIST_ERRORS,
    SPLIT_FILES,
    DatasetUnavailableError,
    MnistArrays,
    MnistUnavailableError,
    Split,
    default_data_dir,
    load_idx_set,
    load_mnist,
    training_and_held_out,
    user_cache_dir,
)

__all__ = ["DatasetInfo", "DatasetUnavailableError", "ImageSet", "MNIST_INFO", "NAMED_SETS", "NAMES",
           "NamedSet", "load_dataset", "load_idx_set", "named_set",
           "DATA_DIR_ENV", "DEFAULT_MIRRORS", "MAX_PAYLOAD_BYTES", "MIRRORS_ENV", "MNIST_CHECKSUMS",
           "MNIST_ERRORS", "SPLIT_FILES", "FileChecksum", "MnistArrays", "MnistFormatError",
           "MnistUnavailableError", "Split", "default_data_dir", "load_mnist", "mnist_mirrors",
           "read_idx", "training_and_held_out", "user_cache_dir"]
