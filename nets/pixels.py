"""Pixels: one MNIST digit's shape, the classes, and uint8 <-> the network's [-1, 1].

uint8 0 = black (background), 255 = white (ink). The network sees float32 x/127.5 - 1 in
[-1, 1] (`to_training_tensor`); `images_to_uint8` maps samples back, exactly inverting it on every
uint8 value.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 28
IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)  # (C, H, W) as the networks see one digit
NUM_CLASSES = 10  # digits 0-9; a conditional U-Net's label index NUM_CLASSES means "no label"


def to_training_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 x/127.5 - 1 in [-1, 1], on ``device``.

    The uint8 array crosses to the device once (a quarter of the float32 bytes) and is scaled
    there, so the trainer can index batches without further copies.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    x = torch.from_numpy(np.array(images, copy=True)).to(device)  # (N, H, W) uint8
    return x.unsqueeze(1).to(torch.float32).div_(127.5).sub_(1.0)  # (N, 1, H, W)


def images_to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] images (N, 1, H, W) or (N, H, W) -> (N, H, W) uint8, 0 = black, 255 = white.

    Computes round((x + 1) * 127.5) in float64 and clips to 0..255; NaN maps to 0. Exactly
    inverts `to_training_tensor` on every uint8 value.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (N, 1, H, W) or (N, H, W), got {x.shape}")
    pixels = np.rint((np.nan_to_num(x, nan=-1.0) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)
