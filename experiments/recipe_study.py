"""The equal-budget recipe study (docs/results.md "Recipe study", issue 13).

Usage:
    python experiments/recipe_study.py OUT_DIR --data-dir DIR --classifier PATH \
        --minutes 5 --threads 1 --workers 2 ARM [ARM ...]
    python experiments/recipe_study.py OUT_DIR ARM --at-step 4000   # its checkpoint-004000.pt
    python experiments/recipe_study.py OUT_DIR --report    # table, plot and grids of what is done

Each arm is one ``python -m nets.train`` on MNIST test[:5000] (``--split test --holdout 5000``)
for a fixed wall-clock budget, then 1,000 digits from ``python -m nets.sample`` (seed 0,
SAMPLER) scored by ``python -m nets.evaluate --checkpoint`` against the 5,000 test digits the
arm never trained on, the real-vs-real floor at the same n beside it. ``--workers 2 --threads 1``
runs two arms side by side with one thread each (an equal share of the 2-core machine);
a confirmation run uses ``--workers 1 --threads 2``. Finished steps are skipped on a rerun.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nets.figures import save_digit_rows  # noqa: E402
from nets.files import write_json_atomic  # noqa: E402

ARMS = {  # name: nets.train flags on top of the defaults
    "baseline": [],
    "warmup-50": ["--warmup-steps", "50"],
    "cosine": ["--schedule", "cosine"],
    "v": ["--objective", "v"],
    "min-snr": ["--loss-weighting", "min-snr"],
    "batch-64": ["--batch-size", "64"],
    "batch-256": ["--batch-size", "256"],
    "lr-1e-3": ["--lr", "1e-3"],
    "lr-4e-3": ["--lr", "4e-3"],
    "width-16": ["--base-channels", "16"],
    "width-48": ["--base-channels", "48"],
    "depth-2": ["--num-res-blocks", "2"],
    "dropout-0.1": ["--dropout", "0.1"],
    "ema-0.99": ["--ema-decay", "0.99"],
    "attn-none": ["--attention-resolutions", "none"],
    "attn-14-7": ["--attention-resolutions", "14,7"],
    "conditional": ["--conditional"],
    # against the defaults since the study (conditional, width 16, batch 64, min-SNR; the cosine
    # decay since the follow-up, flat over --epochs 100000, so time-bounded arms are unchanged):
    "old-recipe": ["--base-channels", "32", "--batch-size", "128", "--loss-weighting", "uniform"],
    "cosine-lr": ["--lr-schedule", "cosine"],  # with steps-N: the decay ends at step N
    "constant-lr": ["--lr-schedule", "constant"],  # the default until the follow-up
    "seed-1": ["--seed", "1"],  # another training seed: how much of a difference is training noise
}
SAMPLER = ["--sampler", "sde-dpmpp-2m", "--steps", "20", "--spacing", "logsnr"]


def parse_arm(name):
    """'a+b' combines arms a and b (later flags win)."""
    flags = []
    for part in name.split("+"):
        if part.startswith("steps-") and part[6:].isdigit():  # steps-N: --max-steps N
            flags += ["--max-steps", part[6:]]
            continue
        if part not in ARMS:
            raise SystemExit(f"error: unknown arm {part!r}; known: {', '.join(ARMS)}")
        flags += ARMS[part]
    return flags


def run(cmd, env, log):
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-m", *map(str, cmd)], check=True, env=env,
                       stdout=f, stderr=subprocess.STDOUT)


def run_arm(name, args):
    run_dir = args.out_dir / name
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log = args.out_dir / f"{name}.log"
    keep = ["--keep-checkpoints", "--checkpoint-every", args.keep_every] if args.keep_every else []
    if not (run_dir / "checkpoint.pt").exists():
        run(["nets.train", "--data-dir", args.data_dir, "--split", "test", "--holdout", args.holdout,
             "--epochs", "100000", "--max-minutes", args.minutes, "--no-figures",
             "--run-dir", run_dir, *parse_arm(name), *keep], env, log)
    conditional = json.loads((run_dir / "config.json").read_text())["conditional"]
    guidance = ["--guidance", str(args.guidance), "--digit", "frequencies"] if conditional else []
    variants = [("", [])] + [(f"-w{w}", ["--guidance", w]) for w in args.extra_guidance if conditional]
    for spec in args.autoguide:  # STEP:W, the guide: the checkpoint at STEP (conditional arms:
        # labels from the frequencies, the later --guidance is the autoguidance weight, no CFG)
        step, w = spec.split(":")
        guide = run_dir / f"checkpoint-{int(step):06d}.pt"
        variants.append((f"-ag{step}-w{w}", ["--guide-model", guide, "--guidance", w]))
    checkpoint, at = run_dir, ""
    if args.at_step:  # an earlier kept checkpoint: arms compared at equal steps, not equal minutes
        checkpoint, at = run_dir / f"checkpoint-{args.at_step:06d}.pt", f"-at{args.at_step}"
    for suffix, extra in variants:
        npz = run_dir / f"samples{at}{suffix}.npz"
        if not npz.exists():
            run(["nets.sample", "--checkpoint", checkpoint, "--n", args.n, *SAMPLER, "--seed", 0,
                 "--batch-size", 250, "--no-progress", "--out", npz, *guidance, *extra], env, log)
        report = npz.with_name(f"{npz.stem}.eval.json")
        if not report.exists():
            run(["nets.evaluate", "--samples", npz, "--checkpoint", run_dir, "--data-dir", args.data_dir,
                 "--nll-images", 0, "--classifier", args.classifier, "--json", report], env, log)


def sampling_of(settings):
    """(how the samples were drawn, network evaluations per image)."""
    desc, calls = f"{settings['sampler']} {settings['steps']}", settings["steps"]
    if settings.get("guidance") is not None:
        desc += f", labels {settings.get('digit', 'all')}"
        desc += f", CFG w = {settings['guidance']:g}" if settings["guidance"] != 1.0 else ""
        calls *= 1 if settings["guidance"] == 1.0 else 2
    if settings.get("autoguidance") is not None:
        desc += f", autoguided by step {settings['guide_step']}, w = {settings['autoguidance']:g}"
        calls *= 2
    if settings.get("seed", 0):
        desc += f", seed {settings['seed']}"
    return desc, calls


def row(run_dir, report):
    r = json.loads(report.read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "step" in m][-1]
    sampling, calls = sampling_of(r["samples"])
    return {"arm": run_dir.name, "samples": report.stem.removesuffix(".eval"),
            "flags": " ".join(parse_arm(run_dir.name)), "sampling": sampling, "calls": calls,
            "requested": r["metrics"].get("label_agreement"),
            "steps": r["samples"].get("checkpoint_step", last["step"]),
            "fd": r["metrics"]["frechet_distance"], "recognised": r["metrics"]["confident_fraction"],
            "class_entropy": r["metrics"]["class_entropy"],
            "memorisation_ratio": r["metrics"]["memorisation_ratio"],
            "floor_fd": r["real_floor"]["frechet_distance"],
            "floor_recognised": r["real_floor"]["confident_fraction"]}


def report(out_dir):
    rows = [row(report.parent, report) for report in sorted(out_dir.glob("*/*.eval.json"))]
    write_json_atomic(out_dir / "study.json", rows)
    for r in sorted(rows, key=lambda r: r["fd"]):
        print(f"{r['arm']:28s} {r['sampling']:50s} steps {r['steps']:5d}  FD {r['fd']:7.1f}  "
              f"recognised {100 * r['recognised']:5.1f}%  entropy {r['class_entropy']:.3f}  "
              f"memo {r['memorisation_ratio']:.3f}   (floor FD {r['floor_fd']:.2f}, "
              f"{100 * r['floor_recognised']:.1f}%)")
    if rows:
        plot(rows, out_dir / "study_quality.png")
        grids(rows, out_dir, out_dir / "study_grids.png")


def plot(rows, path):
    rows = sorted(rows, key=lambda r: r["fd"])
    labels = [f"{r['arm']} @ {r['steps']} steps: {r['sampling']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.32 * len(rows) + 1.5), sharey=True,
                                   gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))
    ax1.barh(y, [r["fd"] for r in rows], color="tab:blue")
    ax1.axvline(rows[0]["floor_fd"], color="grey", ls=":", label="real-vs-real floor")
    ax1.axvline(3 * rows[0]["floor_fd"], color="tab:red", ls="--", label="target: 3× floor")
    ax1.set_xscale("log")
    ax1.set_xlabel("Fréchet distance (classifier features), n = 1,000")
    ax2.barh(y, [100 * r["recognised"] for r in rows], color="tab:green")
    ax2.axvline(100 * rows[0]["floor_recognised"], color="grey", ls=":", label="real unseen digits")
    ax2.axvline(100 * rows[0]["floor_recognised"] - 5, color="tab:red", ls="--",
                label="target: 5 points below")
    ax2.set_xlabel("recognised (confidence ≥ 0.9), %")
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.invert_yaxis()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="x", which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def grids(rows, out_dir, path, per_row=20):
    labelled = []
    for r in sorted(rows, key=lambda r: r["fd"]):
        with np.load(out_dir / r["arm"] / f"{r['samples']}.npz") as f:
            labelled.append((f"{r['arm']} @ {r['steps']} steps\n{r['sampling']}", f["images"][:per_row]))
    save_digit_rows(path, labelled, f"the first {per_row} digits of each arm (seed 0, best FD first)", 6)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir", type=Path)
    p.add_argument("arms", nargs="*")
    p.add_argument("--data-dir")
    p.add_argument("--classifier", type=Path)
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--n", type=int, default=1000, help="samples scored per arm")
    p.add_argument("--holdout", type=int, default=5000,
                   help="the last N test digits, never trained on: what the samples are scored against")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--guidance", type=float, default=2.0, help="conditional arms: guidance w")
    p.add_argument("--extra-guidance", nargs="*", default=[], help="conditional arms: more w to score")
    p.add_argument("--autoguide", nargs="*", default=[],
                   help="STEP:W: also sample autoguided by the arm's checkpoint at STEP "
                   "(arms trained with --keep-checkpoints)")
    p.add_argument("--keep-every", type=int,
                   help="train with --keep-checkpoints --checkpoint-every N (guides for --autoguide)")
    p.add_argument("--at-step", type=int,
                   help="sample the arms' kept checkpoint of this step instead of the last one")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.arms:
        parse_arm(name)
    with ThreadPoolExecutor(args.workers) as pool:
        for done in pool.map(lambda name: run_arm(name, args), args.arms):
            del done
    report(args.out_dir)


if __name__ == "__main__":
    main()
