"""Plot two training runs' losses step by step: a bf16 run against its fp32 twin.

The runs must share the seed and every flag but ``--precision``: they then see the same batches,
timesteps and noise, so the per-step difference of their losses is a paired comparison.

Usage (see docs/results.md, "bf16 vs fp32"):
    python docs/plots/precision_loss.py OUT.png runs/cpu-uncond runs/cpu-uncond-bf16
"""

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def losses(run_dir: str) -> np.ndarray:
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows])


def moving_mean(x: np.ndarray, width: int = 50) -> np.ndarray:
    return np.convolve(x, np.ones(width) / width, mode="valid")


def main(out: str, fp32_run: str, bf16_run: str) -> None:
    a, b = losses(fp32_run), losses(bf16_run)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    steps = np.arange(1, n + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    width = 50
    mid = steps[width - 1:]
    top.semilogy(mid, moving_mean(a, width), label=f"fp32 ({fp32_run})")
    top.semilogy(mid, moving_mean(b, width), "--", label=f"bf16 autocast ({bf16_run})")
    top.set_ylabel(f"loss ({width}-step mean)")
    top.legend()
    top.grid(alpha=0.3)
    rel = 100 * moving_mean(b - a, width) / moving_mean(a, width)
    bottom.plot(mid, rel, color="tab:gray")
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_ylabel("bf16 − fp32 (%)")
    bottom.set_xlabel("step (same batches, t and ε in both runs)")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
