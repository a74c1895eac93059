"""The evaluation report (one frozen dataclass, built by ``nets.evaluation.scoring.score_samples``
alone) and the tables ``nets.evaluate`` prints: samples beside real digits, and the calibration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nets.evaluation.protocol import CONFIDENCE


@dataclass(frozen=True)
class EvaluationReport:
    """The scores of one sample set: ``metrics`` of the samples and ``real_floor``, the same of
    real digits at the same n (each: frechet_distance, confident_fraction, mean_confidence,
    class_entropy, nn_median, ...), ``real`` (which digits they were compared with),
    ``memorisation``, the ``classifier``, the ``nll`` of real digits (or None), and ``samples``:
    how the samples were made (their file and sampler settings, when known)."""

    real: dict
    metrics: dict
    real_floor: dict
    memorisation: dict
    max_class_entropy: float
    eval_images_per_second: float
    classifier: dict
    nll: dict | None = None
    samples: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The report as the JSON ``nets.evaluate`` writes (no ``nll`` key when none was measured)."""
        out = asdict(self)
        if out["nll"] is None:
            del out["nll"]
        return out

    def __getitem__(self, key: str):
        """``report["metrics"]``: the JSON's entries, as the report read before it was a dataclass."""
        return self.to_json()[key]


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_report(report: EvaluationReport) -> None:
    m, f, s = report.metrics, report.real_floor, report.samples
    rows = [
        ("Fréchet distance (classifier features)", _fmt(m["frechet_distance"], ".3f"),
         _fmt(f["frechet_distance"], ".3f")),
        (f"recognised, confidence ≥ {CONFIDENCE}", f"{100 * m['confident_fraction']:.1f}%",
         f"{100 * f['confident_fraction']:.1f}%"),
        ("mean confidence", f"{m['mean_confidence']:.3f}", f"{f['mean_confidence']:.3f}"),
        (f"class entropy (nats; max {report.max_class_entropy:.3f})", f"{m['class_entropy']:.3f}",
         f"{f['class_entropy']:.3f}"),
        ("NN distance to training images (median)", _fmt(m["nn_median"], ".3f"),
         _fmt(f["nn_median"], ".3f")),
        ("memorisation ratio (samples / real)", _fmt(m["memorisation_ratio"], ".3f"), "1"),
    ]
    if m.get("label_agreement") is not None:  # real: the classifier's held-out accuracy
        accuracy = report.classifier.get("held_out_accuracy")
        rows.append(("classified as the requested class", f"{100 * m['label_agreement']:.1f}%",
                     "—" if accuracy is None else f"{100 * accuracy:.1f}%"))
        rows += [(f"  requested class {d}", f"{100 * a:.1f}%", "")
                 for d, a in enumerate(m["label_agreement_per_digit"]) if a == a]
    print(f"{'metric':<42}{'samples':>12}{'real':>12}")
    print(f"{'images':<42}{m['count']:>12}{f['count']:>12}")
    for name, a, b in rows:
        print(f"{name:<42}{a:>12}{b:>12}")
    print(f"class histogram (0-{len(m['class_histogram']) - 1}): " + " ".join(map(str, m["class_histogram"])))
    mem = report.memorisation
    print(f"real digits compared with: {report.real['reference']}")
    print(f"training images: {mem['training_images']}; real baseline: {mem['baseline']} "
          f"({mem['baseline_count']} images)")
    if report.nll is not None:
        n = report.nll
        print(f"NLL: {n['bits_per_dim']:.3f} ± {_fmt(n['stderr'], '.3f')} bits/dim on {n['images']} "
              f"{n['which']} real images (L_T {n['prior_bpd']:.4f}, Σ L_t-1 "
              f"{n['diffusion_bpd']:.3f}, L_0 {n['decoder_bpd']:.3f}; {n['seconds']:.1f}s)")
    if "images_per_second" in s:
        what = f"{s.get('sampler', '?')} {s.get('steps', '?')} steps"
        if s.get("sampler") == "ddim":
            what += f", eta {s.get('eta', 0):g}"
        print(f"sampler: {what}: {s['images_per_second']:.2f} images/s on "
              f"{s.get('device', '?')}")
    print(f"evaluation: {report.eval_images_per_second:.1f} images/s")


def print_calibration(report: dict) -> None:
    head = (f"{'image set':<30}{'n':>6}{'FD':>10}{'conf≥0.9':>10}{'mean conf':>10}"
            f"{'entropy':>9}{'NN med':>8}{'ratio':>7}")
    print(head)
    for r in report["calibration"]:
        print(f"{r['set']:<30}{r['count']:>6}{r['frechet_distance']:>10.3f}"
              f"{100 * r['confident_fraction']:>9.1f}%{r['mean_confidence']:>10.3f}"
              f"{r['class_entropy']:>9.3f}{r['nn_median']:>8.3f}{r['memorisation_ratio']:>7.3f}")
    print(f"baseline NN median (held-out half B to half A): {report['baseline_nn_median']:.3f}")
    n = report["nll_calibration"]
    print(f"NLL bits/dim of {n['images']} real images, linear schedule T={n['timesteps']}: "
          f"ε̂=0 {n['eps_zero']['bits_per_dim']:.3f}, oracle given x0 (the bound's floor) "
          f"{n['oracle_x0']['bits_per_dim']:.3f}, uniform over 256 levels 8")
