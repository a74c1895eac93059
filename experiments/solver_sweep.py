"""Quality against network calls for every sampler on one checkpoint (docs/results.md, issue 14).

Usage:
    python experiments/solver_sweep.py RUN_DIR OUT_DIR --data-dir DIR [--classifier PATH] [--n 1000]

For each (sampler, steps, spacing) of GRID it runs the product's own calls (the ones
``python -m nets.sample`` and ``nets.evaluate --checkpoint`` make): ``nets.load(RUN).sample``
(seed 0, 1,000 digits) then ``Pipeline.evaluate`` (the samples against the real digits of
--split it never trained on, the floor at the same n beside them; one judge for all rows), and collects
OUT_DIR/sweep.json, OUT_DIR/solver_quality.png (FD and recognised share against calls) and
OUT_DIR/solver_grids.png (the first 20 digits of each sampler at 10 calls).
"""

import argparse
import functools
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nets  # noqa: E402
from nets.evaluation.samples import load_samples  # noqa: E402
from nets.figures import save_digit_rows  # noqa: E402
from nets.files import write_json_atomic  # noqa: E402
from nets.sampling.outputs import write_outputs  # noqa: E402

GRID = {  # sampler: (spacing, network calls)
    "ddim": ("trailing", [5, 10, 20, 50]),
    "ddpm": ("trailing", [10, 20, 50]),
    "dpmpp-2m": ("logsnr", [5, 10, 20]),
    "dpmpp-3m": ("logsnr", [5, 10, 20]),
    "sde-dpmpp-2m": ("logsnr", [5, 10, 20]),
}
EXTRA = [("dpmpp-2m", "trailing", 10), ("ddim", "logsnr", 10)]  # the spacing's own effect


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    """The flags :func:`sample_and_score` reads: the real digits, the classifier, n."""
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--classifier", type=Path)
    p.add_argument("--n", type=int, default=1000)


@functools.cache
def judge_of(data_dir: str, split: str, classifier: Path | None):
    """The real digits and the classifier, built once for all rows of a study."""
    return nets.make_judge(data_dir, split, classifier)


def sample_and_score(args, checkpoint: Path, npz: Path, sampler: nets.SamplerSettings | None,
                     precision: str = "auto") -> dict:
    """1,000 (``args.n``) digits of ``checkpoint`` by ``sampler`` (None: the model's default; seed 0;
    the network under ``precision``) into ``npz``, scored against the real digits it never trained
    on; each file is made once (a rerun reuses it). The row's numbers, the floor at the same n
    beside them."""
    pipe = nets.load(checkpoint, precision=precision)
    if not npz.exists():
        chain = pipe.describe_sampler(sampler or pipe.default_sampler)
        print(f"+ sampling {args.n} digits of {checkpoint}: {chain}", file=sys.stderr, flush=True)
        gen = pipe.sample(args.n, sampler=sampler, seed=0, options=nets.SampleOptions(250))
        write_outputs(npz, gen, gen.settings)
    report = npz.with_name(f"{npz.stem}.eval.json")
    if not report.exists():
        images, meta, labels = load_samples(npz)
        scored = pipe.evaluate(images, labels, judge=judge_of(args.data_dir, args.split, args.classifier),
                               about={"path": str(npz), **meta})
        write_json_atomic(report, scored.to_json())
    r = json.loads(report.read_text())
    return {"fd": r["metrics"]["frechet_distance"], "recognised": r["metrics"]["confident_fraction"],
            "class_entropy": r["metrics"]["class_entropy"],
            "memorisation_ratio": r["metrics"]["memorisation_ratio"],
            "floor_fd": r["real_floor"]["frechet_distance"],
            "floor_recognised": r["real_floor"]["confident_fraction"],
            "images_per_second": r["samples"].get("images_per_second")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    add_scoring_args(p)
    p.add_argument("--only", help="instead of GRID: SAMPLER:SPACING:STEPS,... (e.g. ddim:trailing:10)")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    settings = [(s, sp, k) for s, (sp, ks) in GRID.items() for k in ks] + EXTRA
    if args.only:
        settings = [(s, sp, int(k)) for s, sp, k in (item.split(":") for item in args.only.split(","))]
    rows = []
    for sampler, spacing, steps in settings:
        npz = args.out_dir / f"{sampler}-{spacing}-{steps}.npz"
        chain = nets.SamplerSettings(sampler, steps=steps, spacing=spacing)
        rows.append({"sampler": sampler, "spacing": spacing, "calls": steps,
                     **sample_and_score(args, args.run_dir, npz, chain)})
    write_json_atomic(args.out_dir / "sweep.json", rows)
    plot(rows, args.out_dir / "solver_quality.png")
    grids(settings, args.out_dir, args.out_dir / "solver_grids.png")


def plot(rows, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for sampler, (spacing, _) in GRID.items():
        sel = sorted((r for r in rows if r["sampler"] == sampler and r["spacing"] == spacing),
                     key=lambda r: r["calls"])
        calls = [r["calls"] for r in sel]
        ax1.plot(calls, [r["fd"] for r in sel], "o-", label=f"{sampler} ({spacing})")
        ax2.plot(calls, [100 * r["recognised"] for r in sel], "o-", label=f"{sampler} ({spacing})")
    finish_quality_plot(fig, (ax1, ax2), rows[0], path)


def finish_quality_plot(fig, axes, floor_row: dict, path: Path, log_base: float = 10) -> None:
    """The floor lines, log axes, labels and legend of an FD / recognised-share against calls
    figure (``axes`` = its two panels), saved to ``path``."""
    ax1, ax2 = axes
    ax1.axhline(floor_row["floor_fd"], color="grey", ls=":", label="real-vs-real floor")
    ax2.axhline(100 * floor_row["floor_recognised"], color="grey", ls=":", label="real unseen digits")
    for ax, label in ((ax1, "Fréchet distance (classifier features)"), (ax2, "recognised, conf ≥ 0.9 (%)")):
        ax.set_xscale("log", base=log_base)
        ax.set_xlabel("network calls")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    ax1.set_yscale("log")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grids(settings, out_dir, path, calls=10, per_row=20):
    if calls not in [k for _, _, k in settings]:  # a shorter sweep: its fewest calls
        calls = min(k for _, _, k in settings)
    labelled = []
    for sampler, spacing, steps in settings:
        if steps == calls:
            with np.load(out_dir / f"{sampler}-{spacing}-{steps}.npz") as f:
                labelled.append((f"{sampler}\n{spacing}", f["images"][:per_row]))
    save_digit_rows(path, labelled, f"the first {per_row} digits (seed 0) at {calls} network calls", 7)


if __name__ == "__main__":
    main()
