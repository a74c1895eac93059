"""Distilled students and consistency models against their teacher's samplers, per network call
(docs/results.md, issues 21 and 27).

Usage:
    python experiments/distillation_study.py TEACHER_RUN OUT_DIR [--distilled DISTILL_RUN] \\
        [--distilled ANOTHER] [--consistency TUNED_RUN] [--consistency-calls 1,2,4] \\
        [--consistency-fp32] [--consistency-second 150,250,350] \\
        --data-dir DIR [--classifier PATH] [--n 1000] [--teacher-calls 4,8,10,20]

The teacher is sampled with DDIM, DPM-Solver++ 2M and SDE-DPM-Solver++ 2M (trailing spacing) at
each of --teacher-calls; every student of each DISTILL_RUN (its ``steps-NN/`` folders, one per
round; a student found twice is taken from the first) with its own default, DDIM at the steps it
was distilled for; each consistency model (``nets.distill --method consistency``) by consistency
sampling at each of --consistency-calls. Each setting is ``Pipeline.sample`` (seed 0; what
``python -m nets.sample`` runs) then ``Pipeline.evaluate`` against the real digits the teacher
never trained on, the floor at the same n beside them (``solver_sweep.sample_and_score``, one
judge for all rows). Writes OUT_DIR/study.json, OUT_DIR/distillation_quality.png (FD and
recognised share against calls) and OUT_DIR/distillation_grids.png (the first 20 digits of each
consistency model's call count, each student, and the teacher's three samplers at their fewest
calls).
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from solver_sweep import add_scoring_args, finish_quality_plot, sample_and_score  # noqa: E402  (experiments/ is sys.path[0])

import nets  # noqa: E402
from nets.figures import save_digit_rows  # noqa: E402
from nets.files import write_json_atomic  # noqa: E402

TEACHER_SAMPLERS = ("ddim", "dpmpp-2m", "sde-dpmpp-2m")


def students(distill_runs: list[Path]) -> list[tuple[int, Path]]:
    """(steps, folder) of each round's student, fewest steps first."""
    found = {}
    for run in distill_runs:
        for folder in sorted(run.glob("steps-*")):
            if (folder / "checkpoint.pt").exists():
                found.setdefault(int(folder.name.split("-")[1]), folder)
    return sorted(found.items())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("teacher", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--distilled", type=Path, action="append", default=[])
    p.add_argument("--consistency", type=Path, action="append", default=[])
    p.add_argument("--consistency-calls", default="1,2,4")
    p.add_argument("--consistency-second", default="",
                   help="also 2-call consistency sampling with the second call at each of these indices "
                   "(comma-separated; the default's is core.consistency_timesteps')")
    p.add_argument("--consistency-fp32", action="store_true",
                   help="also sample each consistency model in fp32 (the other rows: --precision auto)")
    add_scoring_args(p)
    p.add_argument("--teacher-calls", default="4,8,10,20")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sampler in TEACHER_SAMPLERS:
        for calls in map(int, args.teacher_calls.split(",")):
            npz = args.out_dir / f"teacher-{sampler}-{calls}.npz"
            settings = nets.SamplerSettings(sampler, steps=calls, spacing="trailing")
            rows.append({"model": "teacher", "sampler": sampler, "calls": calls,
                         **sample_and_score(args, args.teacher, npz, settings)})
    for steps, folder in students(args.distilled):
        npz = args.out_dir / f"student-{steps}.npz"
        rows.append({"model": "student", "sampler": "ddim (distilled)", "calls": steps,
                     "checkpoint": str(folder), **sample_and_score(args, folder, npz, None)})
    if args.distilled and not any(r["model"] == "student" for r in rows):
        sys.exit(f"no students (steps-NN/checkpoint.pt) in {', '.join(map(str, args.distilled))}")
    for i, run in enumerate(args.consistency):
        rows += consistency_rows(args, run, f"consistency{i or ''}")
    for r in rows:
        r["seconds_per_1000"] = 1000 / r["images_per_second"] if r["images_per_second"] else None
    write_json_atomic(args.out_dir / "study.json", rows)
    plot(rows, args.out_dir / "distillation_quality.png")
    grids(rows, args.out_dir, args.out_dir / "distillation_grids.png")


def consistency_rows(args, run: Path, name: str) -> list[dict]:
    """The consistency model ``run`` at each of --consistency-calls (bf16, and fp32 with
    --consistency-fp32), and at 2 calls with the second at each of --consistency-second."""
    rows = []
    for calls in map(int, args.consistency_calls.split(",")):
        settings = nets.SamplerSettings("consistency", steps=calls)
        for precision in ("auto", "fp32") if args.consistency_fp32 else ("auto",):
            npz = args.out_dir / f"{name}-{calls}{'' if precision == 'auto' else '-fp32'}.npz"
            row = {"model": name, "sampler": "consistency", "calls": calls, "checkpoint": str(run)}
            if precision == "fp32":
                row["precision"] = "fp32"
            rows.append({**row, **sample_and_score(args, run, npz, settings, precision)})
    last = nets.load(run).loaded.diffusion.num_timesteps - 1
    for second in (int(s) for s in args.consistency_second.split(",") if s):
        settings = nets.SamplerSettings("consistency", times=(second, last))
        rows.append({"model": name, "sampler": "consistency", "calls": 2, "times": [second, last],
                     "checkpoint": str(run),
                     **sample_and_score(args, run, args.out_dir / f"{name}-2-at-{second}.npz", settings)})
    return rows


def plot(rows, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    lines = [(f"teacher {s}", [r for r in rows if r["model"] == "teacher" and r["sampler"] == s], "o-")
             for s in TEACHER_SAMPLERS]
    lines.append(("distilled students (DDIM)", [r for r in rows if r["model"] == "student"], "s-"))
    for model in sorted({r["model"] for r in rows if r["model"].startswith("consistency")}):
        sel = [r for r in rows if r["model"] == model and not {"precision", "times"} & r.keys()]
        lines.append((f"{model} model", sel, "D-"))
    for label, sel, style in lines:
        sel = sorted(sel, key=lambda r: r["calls"])
        calls = [r["calls"] for r in sel]
        ax1.plot(calls, [r["fd"] for r in sel], style, label=label)
        ax2.plot(calls, [100 * r["recognised"] for r in sel], style, label=label)
    finish_quality_plot(fig, (ax1, ax2), rows[0], path, log_base=2)


def grids(rows, out_dir, path, per_row=20):
    labelled = []
    ours = (r for r in rows if r["model"].startswith("consistency") and not {"precision", "times"} & r.keys())
    for r in sorted(ours, key=lambda r: r["calls"]):
        with np.load(out_dir / f"{r['model']}-{r['calls']}.npz") as f:
            plural = "s" if r["calls"] > 1 else ""
            labelled.append((f"{r['model']}\n{r['calls']} call{plural}", f["images"][:per_row]))
    for r in sorted((r for r in rows if r["model"] == "student"), key=lambda r: r["calls"]):
        with np.load(out_dir / f"student-{r['calls']}.npz") as f:
            labelled.append((f"student\n{r['calls']} calls", f["images"][:per_row]))
    fewest = min(r["calls"] for r in rows if r["model"] == "teacher")
    for sampler in TEACHER_SAMPLERS:
        with np.load(out_dir / f"teacher-{sampler}-{fewest}.npz") as f:
            labelled.append((f"teacher {sampler}\n{fewest} calls", f["images"][:per_row]))
    save_digit_rows(path, labelled, f"the first {per_row} digits (seed 0), by model and calls", 7)


if __name__ == "__main__":
    main()
