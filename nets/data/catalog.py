"""The datasets known by name: what each one is, where its files come from, what they must match.

    name            format           images            classes
    mnist           IDX (gzipped)    1 × 28 × 28       the digits "0".."9"
    fashion-mnist   IDX (gzipped)    1 × 28 × 28       T-shirt/top, Trouser, ... Ankle boot
    kmnist          IDX (gzipped)    1 × 28 × 28       the hiragana o, ki, su, ... wo
    cifar10         CIFAR-10 binary  3 × 32 × 32       airplane, automobile, ... truck

Any other ``--dataset`` value is a folder of images (``nets.data.folder``). The ``.gz`` MD5s are the
ones the datasets' authors publish (and torchvision lists); a named set's files are found in its
data directory or downloaded from its mirrors and checked against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from nets.data.checksums import MNIST_CHECKSUMS, FileChecksum
from nets.data.fetch import DEFAULT_MIRRORS

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class NamedSet:
    """One dataset known by name: its file ``format``, image ``shape`` (C, H, W), class names, the
    mirrors its files are downloaded from and what each file must match."""

    name: str
    title: str
    format: Literal["idx", "cifar10-binary"]
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    checksums: Mapping[str, FileChecksum]
    licence: str


def _idx_checksums(md5s: tuple[str, str, str, str]) -> Mapping[str, FileChecksum]:
    """The four files of an MNIST-format set (the same names and sizes as MNIST's), by .gz MD5."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    return MappingProxyType({name: FileChecksum(MNIST_CHECKSUMS[name].size, md5)
                             for name, md5 in zip(names, md5s, strict=True)})


CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_BYTES = 170_052_171

NAMED_SETS: Mapping[str, NamedSet] = MappingProxyType({
    "mnist": NamedSet("mnist", "MNIST", "idx", (1, 28, 28), DIGITS, DEFAULT_MIRRORS, MNIST_CHECKSUMS,
                      "CC BY-SA 3.0 (LeCun, Cortes and Burges)"),
    "fashion-mnist": NamedSet("fashion-mnist", "Fashion-MNIST", "idx", (1, 28, 28), (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
        "Ankle boot"), (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ), _idx_checksums(("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                       "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        "MIT (Zalando Research)"),
    "kmnist": NamedSet("kmnist", "KMNIST", "idx", (1, 28, 28), (
        "o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), (
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    ), _idx_checksums(("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                       "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134")),
        "CC BY-SA 4.0 (ROIS-DS Center for Open Data in the Humanities)"),
    "cifar10": NamedSet("cifar10", "CIFAR-10", "cifar10-binary", (3, 32, 32), (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), (
        "https://www.cs.toronto.edu/~kriz/",
    ), MappingProxyType({CIFAR10_ARCHIVE: FileChecksum(CIFAR10_ARCHIVE_BYTES,
                                                       "c32a1d4ab5d03f1284b67883e8d87530")}),
        "see https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)"),
})

NAMES = tuple(NAMED_SETS)


def named_set(name: str) -> NamedSet | None:
    """The named set ``name`` (case and '_' for '-' forgiven), or None: ``name`` is a folder."""
    return NAMED_SETS.get(name.lower().replace("_", "-"))
