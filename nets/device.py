"""Where the network runs and in what arithmetic: the device and precision rules.

One rule for every command and benchmark: ``auto`` picks CUDA, then MPS, then the CPU; ``--precision
auto`` picks bf16 autocast where the device multiplies bf16 in hardware, else fp32. Problems raise
ValueError naming the flag's value; the commands turn it into one line and exit code 2.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA, then MPS, then CPU; an explicit device must be available (else ValueError)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # reported just below
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("cuda requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{name} requested but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("mps requested but MPS is not available")
    return device


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies in bfloat16 in hardware (CUDA since Ampere; CPUs with
    AVX512-BF16 or AMX, through oneDNN). Elsewhere bf16 autocast is emulated and slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The network's autocast dtype for ``--precision``: None means plain float32.

    ``auto`` picks bfloat16 where the device has it natively and float32 elsewhere; the
    weights, the optimizer, the loss's reduction and every diffusion coefficient stay float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp32" or (precision == "auto" and not has_native_bf16(device)):
        return None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"bfloat16 autocast is not supported on {device.type}; use fp32")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16`` or ``fp32``: the name a resolved autocast dtype goes by in flags and outputs."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def describe_precision(dtype: torch.dtype | None) -> str:
    return "bf16 autocast" if dtype == torch.bfloat16 else "fp32"


def use_tf32_on_cuda(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (the trainer's and benchmarks' setting)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_format_for(device: torch.device, amp_dtype: torch.dtype | None) -> torch.memory_format:
    """channels_last where it was measured to help: fp32 on CPU (+3-15 % per step in
    docs/benchmarks.md); bf16 on CPU is 25 % slower with it, and CUDA is unmeasured."""
    return torch.channels_last if device.type == "cpu" and amp_dtype is None else torch.contiguous_format
