"""How every number in ``benchmarks/`` is measured and reported.

Timing. :func:`interleave` runs the compared variants round-robin after their warm-up, rotating
the order each round (A B C, B C A, C A B, ...), so that load from other processes on a shared
machine falls on every variant alike; a variant's result is the median of its repeats with
their min and max. Ratios between variants are taken within one run, round by round
(:func:`paired_ratio`), never across runs.

FLOPs. :func:`count_flops` counts with ``torch.utils.flop_counter.FlopCounterMode``:
convolutions, matmuls and attention, not elementwise work (norms, activations, the optimizer).

Peak. :func:`matmul_peaks` times a square matmul in the same run, before and after the
variants: fp32 2048² on CPU and bf16 8192² on CUDA, plus each precision benchmarked; the fastest
repeat is the peak, and "fraction of peak" is achieved FLOP/s over the peak of the row's precision.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from nets.device import has_native_bf16
from nets.files import write_json_atomic


@dataclass
class Timing:
    """Seconds per unit of work (a training step, a sampling step) of each repeat."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max − min) / median of the repeats."""
        return (max(self.seconds) - min(self.seconds)) / self.median

    def to_dict(self) -> dict:
        return {"median": self.median, "min": min(self.seconds), "max": max(self.seconds),
                "spread": self.spread, "repeats": self.seconds}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleave(variants: dict[str, Callable[[], object]], repeats: int, warmup: int,
               device: torch.device, units: int = 1, clock: str = "wall") -> dict[str, Timing]:
    """Time each ``variants[name]()`` (``units`` units of work per call) ``repeats`` times.

    Every variant first runs ``warmup`` untimed calls; then the rounds rotate the variants'
    order. Returns seconds per unit, of wall time or of this process's CPU time (``clock="cpu"``:
    on a shared CPU with one torch thread, the time other processes take is left out).
    """
    now = CLOCKS[clock]
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = now()
            variants[name]()
            synchronize(device)
            seconds[name].append((now() - start) / units)
    return {name: Timing(s) for name, s in seconds.items()}


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator/denominator, each round's pair measured back to back."""
    return statistics.median(a / b for a, b in zip(numerator.seconds, denominator.seconds, strict=True))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (convolutions, matmuls, attention; backward included if run)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(device: torch.device, precision: str, repeats: int = 10, clock: str = "wall") -> dict:
    """FLOP/s of a square matmul in ``precision`` (fp32, bf16): 2048² on CPU, 8192² on CUDA.

    ``flops_per_s`` is the fastest of ``repeats`` (after one warm-up): on a shared machine the
    median mostly measures the other processes. fp32 on CUDA runs as TF32 (the scripts allow it).
    """
    n, dtype = (8192 if device.type == "cuda" else 2048), MATMUL_DTYPES[precision]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = interleave({"matmul": lambda: a @ b}, repeats, 1, device, clock=clock)["matmul"]
    return {"matmul": f"{n}x{n} {precision}", "flops_per_s": 2 * n**3 / min(timing.seconds),
            "median_flops_per_s": 2 * n**3 / timing.median}


def matmul_peaks(device: torch.device, precisions: Sequence[str], repeats: int = 10,
                 clock: str = "wall") -> dict:
    """{precision: matmul_peak} for the device's reference (fp32 on CPU, bf16 on CUDA) and
    every precision in ``precisions``."""
    reference = "bf16" if device.type == "cuda" else "fp32"
    return {p: matmul_peak(device, p, repeats, clock) for p in dict.fromkeys([reference, *precisions])}


def best_peaks(runs: Sequence[dict]) -> dict:
    """Per precision, the highest of several `matmul_peaks` results (before and after a run)."""
    return {p: {**max((r[p] for r in runs), key=lambda m: m["flops_per_s"]),
                "measurements": [r[p] for r in runs]} for p in runs[0]}


def set_fraction_of_peak(rows: Sequence[dict], peaks: dict) -> None:
    """row["fraction_of_peak"]: achieved FLOP/s over the matmul peak in the row's precision."""
    for row in rows:
        gflops = row.get("gflops_per_s")
        peak = peaks[row["precision"]]["flops_per_s"]
        row["fraction_of_peak"] = None if gflops is None else gflops * 1e9 / peak


def describe_peaks(peaks: dict) -> str:
    return ", ".join(f"{p['matmul']} {p['flops_per_s'] / 1e9:.1f} GFLOP/s" for p in peaks.values())


def machine(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()],  # others' work on a shared box
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "native_bf16": has_native_bf16(device)}  # whether bf16 autocast multiplies in hardware
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report_default_speedups(rows: Sequence[dict], precision: str, key: Callable[[dict], str],
                            what: str, unit: str) -> dict[str, float]:
    """The project's default path (row ``project <precision>``) against naive: printed as one
    line ("<what> (--precision auto = <precision>): 1.69x naive <unit> 64, ...") and returned
    by ``key(row)`` for the JSON; nothing when that precision was not benchmarked."""
    speedups = {key(r): r["speedup_vs_naive"] for r in rows if r["variant"] == f"project {precision}"}
    if speedups:
        print(f"{what} (--precision auto = {precision}): "
              + ", ".join(f"{v:.2f}x naive {unit} {k}" for k, v in speedups.items()))
    return speedups


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are (key, header, format spec), None shows as '-'."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(k) is None else format(row[k], f) for k, _, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    write_json_atomic(path, payload)
