"""Pixels: the pixel layout, MNIST's shape and classes (the default dataset, and what a
checkpoint written before datasets were recorded holds), and uint8 <-> the network's [-1, 1].

uint8 0 = black (background), 255 = white (ink). Images are kept and saved in the pixel layout:
(N, H, W) for one channel, (N, H, W, 3) for colour. The network sees (N, C, H, W) float32
x/127.5 - 1 in [-1, 1] (`to_training_tensor`); `images_to_uint8` maps samples back, exactly
inverting it on every uint8 value.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 28
IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)  # (C, H, W) of an MNIST digit
NUM_CLASSES = 10  # MNIST's digits; a conditional U-Net's label index num_classes means "no label"


def layout_shape(shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The pixel layout of one image of network shape (C, H, W): (H, W) or (H, W, C)."""
    c, h, w = shape
    return (h, w) if c == 1 else (h, w, c)


def network_shape(images: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of images in the pixel layout (N, H, W) or (N, H, W, C)."""
    if images.ndim == 3:
        return (1, *images.shape[1:3])
    return (images.shape[3], *images.shape[1:3])


def describe_layout(shape: tuple[int, int, int] | None) -> str:
    """The pixel layout of images of network shape ``shape`` in words: "(N, 28, 28)"."""
    if shape is None:
        return "(N, H, W) or (N, H, W, 3)"
    return f"(N, {', '.join(map(str, layout_shape(shape)))})"


def in_layout(images: np.ndarray, shape: tuple[int, int, int] | None = None) -> bool:
    """Whether ``images`` are in the pixel layout, (N, H, W) or (N, H, W, 3), of network shape
    ``shape`` where given (the dtype is not looked at)."""
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        return False
    return shape is None or images.shape[1:] == layout_shape(shape)


def check_layout(images: np.ndarray, what: str, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """``images`` as uint8 in the pixel layout (of network shape ``shape`` where given); a
    ValueError naming ``what`` and both shapes otherwise."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or not in_layout(images, shape):
        raise ValueError(f"{what} must be uint8 images {describe_layout(shape)}, got {images.dtype} "
                         f"{images.shape}")
    return images


def to_training_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) float32 x/127.5 - 1 in [-1, 1], on ``device``.

    The uint8 array crosses to the device once (a quarter of the float32 bytes) and is scaled
    there, so the trainer can index batches without further copies.
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) uint8 images, got {images.shape} "
                         f"{images.dtype}")
    x = torch.from_numpy(np.array(images, copy=True)).to(device)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def images_to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) or (N, H, W) -> uint8 in the pixel layout, 0 = black, 255 = white.

    Computes round((x + 1) * 127.5) in float64 and clips to 0..255; NaN maps to 0. Exactly
    inverts `to_training_tensor` on every uint8 value.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)
    if x.ndim != 3 and not (x.ndim == 4 and x.shape[-1] == 3):
        raise ValueError(f"expected images of shape (N, C, H, W) or (N, H, W), got {x.shape}")
    pixels = np.rint((np.nan_to_num(x, nan=-1.0) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)
