"""A folder of images as a dataset: class subfolders give the labels, decoded once into a cache.

Layout (the ImageFolder convention): ``root/<class>/.../<image>`` gives each image the class of
its top-level subfolder (class names are the subfolders' names, sorted); a folder holding images
and no subfolders is one unlabelled set. Hidden files and folders (a leading ``.``) and files
Pillow has no reader for (by suffix: ``README.txt``) are skipped. Every image is read by Pillow.

Pixels, one documented way:
  * size: the shorter side is resized to ``image_size`` (bicubic, antialiased) and the longer one
    centre-cropped; an image already ``image_size`` square is kept exactly. ``image_size`` None:
    the most common shorter side of the images, at most 64 (the largest U-Net preset).
  * alpha (RGBA, LA, a palette with a transparent colour) is composited over black, the
    background of every dataset here (0 = background); a palette image is converted to its colours;
    16-bit greyscale is scaled to 8 bits (÷ 257).
  * channels: ``channels`` None: 1 when every image is greyscale (or a grey palette), else 3;
    colour → grey by the ITU-R 601-2 luma (Pillow's ``L``), grey → colour by repeating the value.
Rows are in the order of the SHA-1 of each file's path below the root, so ``--limit`` and
``--holdout`` (the last rows) take a mix of the classes, the same on every machine.

Cache: the decoded uint8 array is written once under ``$XDG_CACHE_HOME/ddpm/folders/`` (else
``~/.cache/ddpm/folders/``), keyed by every file's path, size and modification time and by the
size and channels asked for; the next run memory-maps it instead of decoding. A changed, added or
removed file is a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nets.data.idx import MnistFormatError
from nets.data.mnist import user_cache_dir
from nets.files import write_text_atomic
from nets.progress import Progress

CACHE_VERSION = 1
LARGEST_AUTO_SIZE = 64  # images larger than the largest preset are read at it unless asked
GREY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"})
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def image_suffixes() -> frozenset[str]:
    """The file suffixes Pillow has a reader for (lower case, with the dot)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


@dataclass(frozen=True)
class FolderScan:
    """The images of a folder in row order, their labels (None: unlabelled) and class names, and
    the key of their names, sizes and times."""

    root: Path
    files: tuple[str, ...]  # paths below root, '/'-separated
    labels: tuple[int, ...] | None
    class_names: tuple[str, ...]
    key: str


def scan_folder(root: str | os.PathLike[str]) -> FolderScan:
    """The images below ``root``; MnistFormatError (a ValueError naming the path) for a folder
    with no images, a class folder with none, or images beside class folders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MnistFormatError(root, "is not a folder")
    suffixes = image_suffixes()
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in suffixes]
    if classes and loose:
        raise MnistFormatError(root, f"holds {len(loose)} images (such as {loose[0].name}) beside its "
                                     f"class folders; put them in a class folder or move them away")
    if not classes:
        if not loose:
            raise MnistFormatError(root, no_images_message(entries))
        return _scan(root, [(p, None) for p in loose], ())
    pairs = []
    for label, folder in enumerate(classes):
        found = [p for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.suffix.lower() in suffixes
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if not found:
            raise MnistFormatError(folder, "is a class folder with no images in it")
        pairs += [(p, label) for p in found]
    return _scan(root, pairs, tuple(p.name for p in classes))


def no_images_message(entries: list[Path]) -> str:
    files = [p for p in entries if p.is_file()]
    if not files:
        return "holds no images (it is empty)"
    kinds = sorted({p.suffix.lower() or p.name for p in files})[:5]
    return (f"holds no images: {len(files)} file{'s' if len(files) > 1 else ''} ({', '.join(kinds)}), none "
            f"of a kind Pillow reads (.png, .jpg, .bmp, .gif, .webp, ...)")


def _scan(root: Path, pairs: list[tuple[Path, int | None]], class_names: tuple[str, ...]) -> FolderScan:
    rel = [(p.relative_to(root).as_posix(), label, p) for p, label in pairs]
    rel.sort(key=lambda r: hashlib.sha1(r[0].encode()).hexdigest())
    digest = hashlib.sha256(json.dumps(class_names).encode())
    for name, _label, path in sorted(rel):
        st = path.stat()
        digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    labels = None if not class_names else tuple(label for _n, label, _p in rel)
    return FolderScan(root, tuple(name for name, _l, _p in rel), labels, class_names, digest.hexdigest())


# ---- reading one image ------------------------------------------------------------------------

def open_image(path: Path) -> Image.Image:
    """The image at ``path``, its header read; MnistFormatError naming it if Pillow cannot read it
    or its pixel count passes Pillow's decompression-bomb limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MnistFormatError(path, f"is larger than Pillow's decompression-bomb limit "
                                     f"({Image.MAX_IMAGE_PIXELS:,} pixels): {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MnistFormatError(path, f"is not an image Pillow can read ({err})") from None


def is_grey(image: Image.Image) -> bool:
    if image.mode == "P":
        palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
        return bool(np.all(palette == palette[:, :1]))
    return image.mode in GREY_MODES


def decoded(image: Image.Image, path: Path) -> Image.Image:
    """``image`` in mode L or RGB with its alpha composited over black (see the module)."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in SIXTEEN_BIT:
        return Image.fromarray(np.rint(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8))
    if image.mode in ("I", "F"):
        raise MnistFormatError(path, f"holds {image.mode} pixels (32-bit integers or floats); save it "
                                     f"as an 8-bit PNG or JPEG")
    if "A" in image.mode or "a" in image.mode:
        grey = image.mode in ("LA", "La")
        rgba = np.asarray(image.convert("LA" if grey else "RGBA"), dtype=np.float64)
        pixels = np.rint(rgba[..., :-1] * rgba[..., -1:] / 255.0).astype(np.uint8)
        return Image.fromarray(pixels[..., 0] if grey else pixels)
    return image if image.mode in ("L", "RGB") else image.convert("RGB" if image.mode != "1" else "L")


def square(image: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to ``size`` (bicubic), the longer one centre-cropped."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def pixels_of(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (size, size) or (size, size, 3); MnistFormatError naming a bad file."""
    with open_image(path) as image:
        try:
            image.load()
            image = square(decoded(image, path), size)
        except MnistFormatError:
            raise
        except (OSError, SyntaxError, ValueError) as err:
            raise MnistFormatError(path, f"is damaged: Pillow cannot decode it ({err})") from None
        return np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


# ---- the whole folder -------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderLook:
    """What the headers say: the size and channels the images will be read at, and what they
    will need (the notes said once, when the folder is decoded)."""

    size: int
    channels: int
    notes: tuple[str, ...]


def look(scan: FolderScan, size: int | None, channels: int | None) -> FolderLook:
    """Every image's header read (a file Pillow cannot open is a MnistFormatError naming it): the
    size and channels to read at, and the conversions that will take."""
    sizes, modes, grey = Counter(), Counter(), True
    for name in scan.files:
        with open_image(scan.root / name) as image:
            sizes[image.size] += 1
            modes[image.mode] += 1
            grey = grey and is_grey(image)
    shorter = Counter()
    for (w, h), count in sizes.items():
        shorter[min(w, h)] += count
    size = size or min(shorter.most_common(1)[0][0], LARGEST_AUTO_SIZE)
    channels = channels or (1 if grey else 3)
    return FolderLook(size, channels, conversion_notes(sizes, modes, size, channels, len(scan.files)))


def conversion_notes(sizes: Counter, modes: Counter, size: int, channels: int, n: int) -> tuple[str, ...]:
    notes = []
    other = sum(c for wh, c in sizes.items() if wh != (size, size))
    if other:
        notes.append(f"{other:,} of {n:,} images are not {size}×{size}: resized (shorter side) and "
                     f"centre-cropped")
    alpha = sum(c for m, c in modes.items() if "A" in m or "a" in m)
    if alpha:
        notes.append(f"{alpha:,} images have an alpha channel: composited over black")
    target = "L" if channels == 1 else "RGB"
    changed = sum(c for m, c in modes.items() if (m in GREY_MODES) != (channels == 1) and m != "P")
    if changed:
        how = "luma" if channels == 1 else "grey repeated"
        notes.append(f"{changed:,} images converted to {target} ({how})")
    if len(modes) > 1:
        notes.append(f"modes: {', '.join(f'{m} ×{c:,}' for m, c in modes.most_common())}")
    return tuple(notes)


@dataclass(frozen=True)
class FolderImages:
    images: np.ndarray  # (N, S, S) or (N, S, S, 3) uint8, read-only (memory-mapped from the cache)
    labels: np.ndarray | None  # (N,) int64 class indices
    scan: FolderScan
    look: FolderLook
    from_cache: bool


def load_folder(root: str | os.PathLike[str], size: int | None = None, channels: int | None = None,
                progress: bool = True) -> FolderImages:
    """The folder's images at ``size`` with ``channels`` (None: follow the data), from the cache
    when the files have not changed, else decoded once and cached. MnistFormatError naming a file
    that cannot be read (nothing is cached then)."""
    scan = scan_folder(root)
    labels = None if scan.labels is None else np.asarray(scan.labels, dtype=np.int64)
    asked = (size, channels)
    size, channels = followed(scan.key, size, channels)  # what "follow the data" resolved to before
    cached = read_cache(cache_entry(scan.key, size, channels))
    if cached is not None:
        images, meta = cached
        return FolderImages(images, labels, scan, FolderLook(meta["size"], meta["channels"],
                                                             tuple(meta["notes"])), True)
    seen = look(scan, size, channels)
    entry = cache_entry(scan.key, seen.size, seen.channels)
    cached = read_cache(entry)
    images = cached[0] if cached is not None else decode_into_cache(scan, seen, entry, progress)
    remember_followed(scan.key, asked, seen)
    return FolderImages(images, labels, scan, seen, cached is not None)


def cache_entry(key: str, size: int | None, channels: int | None) -> Path:
    return user_cache_dir() / "folders" / f"{key[:24]}-{size or 'auto'}-{channels or 'auto'}"


def followed(key: str, size: int | None, channels: int | None) -> tuple[int | None, int | None]:
    """``size`` and ``channels`` with a None filled from an earlier run's reading of the same
    files (so a cached run reads no image header), else as given."""
    if size is not None and channels is not None:
        return size, channels
    try:
        known = json.loads(cache_entry(key, size, channels).with_suffix(".json").read_text())
        return int(known["size"]), int(known["channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return size, channels


def remember_followed(key: str, asked: tuple[int | None, int | None], seen: FolderLook) -> None:
    if None not in asked:
        return
    path = cache_entry(key, *asked).with_suffix(".json")
    try:
        write_text_atomic(path, json.dumps({"size": seen.size, "channels": seen.channels}))
    except OSError:
        pass  # without it the next run reads the headers again, nothing worse


def read_cache(entry: Path) -> tuple[np.ndarray, dict] | None:
    """(the memory-mapped images, the meta) of a complete cache entry, else None."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        return np.load(entry / "images.npy", mmap_mode="r"), meta
    except (OSError, ValueError):
        return None


def decode_into_cache(scan: FolderScan, seen: FolderLook, entry: Path, progress: bool) -> np.ndarray:
    """Decode every image into ``entry`` (written in a temporary folder, then renamed: a killed
    decode leaves no entry); the images memory-mapped from it, or in memory where the cache
    cannot be written."""
    shape = (len(scan.files), seen.size, seen.size) + ((3,) if seen.channels == 3 else ())
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    except OSError as err:
        print(f"cannot write the image cache {entry.parent} ({err.strerror or err}): decoding into "
              f"memory", file=sys.stderr)
        tmp, images = None, np.empty(shape, dtype=np.uint8)
    try:
        fill(images, scan, seen, progress)
        if tmp is None:
            return images
        images.flush()
        del images
        meta = {"version": CACHE_VERSION, "key": scan.key, "root": str(scan.root), "size": seen.size,
                "channels": seen.channels, "count": len(scan.files), "notes": list(seen.notes)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    cached = read_cache(entry)
    if cached is None:
        raise OSError(f"the image cache {entry} was written but cannot be read back")
    return cached[0]


def fill(images: np.ndarray, scan: FolderScan, seen: FolderLook, progress: bool) -> None:
    bar = Progress(f"decoding {scan.root}" if progress else None, len(scan.files), rate_unit="img/s")
    for i, name in enumerate(scan.files):
        images[i] = pixels_of(scan.root / name, seen.size, seen.channels)
        if i % 2000 == 1999:
            bar.update(i + 1)
    bar.update(len(scan.files))
    bar.close()
