"""Evaluate generated digits: ``python -m nets.evaluate``.

    python -m nets.evaluate --samples FILE.npz --data-dir DIR --split SPLIT [--json PATH]
        [--classifier PATH] [--checkpoint RUN --nll-images N]
    python -m nets.evaluate --calibrate --data-dir DIR --split SPLIT [--json PATH]

Metrics (docs/evaluation.md gives their calibrated ranges):
  * Fréchet distance between generated and real images in the 128-d penultimate features of
    the project's MNIST classifier (``nets.classifier``): FID's formula in another space.
  * Share of digits the classifier recognises with confidence ≥ 0.9, mean confidence,
    predicted-class histogram and its entropy (ln 10 ≈ 2.303 when balanced).
  * Memorisation: median pixel-L2 distance ([0, 1] pixels) from each sample to its nearest
    training image, against the same for real images the model never saw; the ratio.
  * With ``--checkpoint``: NLL in bits/dim of real images under the variational bound of Ho
    et al. (2020) eq. 5 (diffusion_core's prior, per-step KL and decoder terms), T model calls
    per batch, on ``--nll-images`` images (default 16).

A missing classifier is trained on the given split and saved (about a minute on a CPU), unless
``--no-train-classifier``, which exits 2 with the command that trains it.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import diffusion_core as core
from nets import classifier as clf
from nets import cli, metrics
from nets.checkpoint import CheckpointError
from nets.diffusion import Diffusion

CONFIDENCE = 0.9
BASELINE_IMAGES = 2000  # held-out real images whose nearest-neighbour distance is the baseline
DEFAULT_NLL_IMAGES = 16


class SamplesError(ValueError):
    """An .npz of samples that cannot be evaluated."""


# ---------------------------------------------------------------------------------------------
# Inputs


def load_samples(path: str | Path) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """``images`` uint8 (N ≥ 2, 28, 28), the scalar settings saved beside it by nets.sample, and
    the requested ``labels`` (N,) of a conditional model's samples (None when absent)."""
    path = Path(path)
    if not path.is_file():
        raise SamplesError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise SamplesError(f"{path} is empty")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise SamplesError(f"{path} is not a readable .npz archive: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                           ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SamplesError(f"{path} is a single .npy array, not an .npz archive with an "
                           f"'images' array")
    with archive:
        if "images" not in archive.files:
            raise SamplesError(f"{path} has no 'images' array (it holds: "
                               f"{', '.join(archive.files) or 'nothing'})")
        try:
            images = archive["images"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise SamplesError(f"{path}: 'images' cannot be read: {err}") from None
        labels = None
        if "labels" in archive.files:
            try:
                labels = archive["labels"]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                raise SamplesError(f"{path}: 'labels' cannot be read: {err}") from None
        meta = {}
        for key in archive.files:
            if key in ("images", "labels", "trajectory", "trajectory_timesteps"):
                continue
            try:
                value = archive[key]
            except (ValueError, OSError):
                continue
            if value.ndim == 0 and value.dtype.kind in "biufU":
                meta[key] = value.item()
    if images.dtype != np.uint8:
        raise SamplesError(f"{path}: 'images' must be uint8 (0 black, 255 white), got "
                           f"{images.dtype} (nets.data.images_to_uint8 converts [-1, 1] floats)")
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise SamplesError(f"{path}: 'images' must have shape (N, 28, 28), got {images.shape}")
    if len(images) < 2:
        raise SamplesError(f"{path}: need at least 2 images for a covariance, got {len(images)}")
    if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != (len(images),)
                               or labels.min() < 0 or labels.max() > 9):
        raise SamplesError(f"{path}: 'labels' must be integers 0-9 of shape ({len(images)},), "
                           f"got {labels.dtype} {labels.shape}")
    return images, meta, labels


def load_or_train_classifier(path: Path, real_images: np.ndarray, real_labels: np.ndarray,
                             split: str, data_dir: str | None, train: bool,
                             device: torch.device) -> tuple[clf.MnistClassifier, dict]:
    if not path.exists():
        command = (f"python -m nets.classifier --split {split} --out {path}"
                   + (f" --data-dir {data_dir}" if data_dir else ""))
        if not train:
            cli.fail(f"--classifier: {path} not found; train it with: {command}")
        print(f"classifier not found at {path}: training it on MNIST {split} "
              f"({len(real_images)} images; the same as `{command}`)", file=sys.stderr)
        try:
            clf.train_and_save(real_images, real_labels, path, device=device,
                               source=f"MNIST {split}")
        except clf.ClassifierError as err:
            cli.fail(f"classifier: {err}", code=1)
        except OSError as err:
            cli.fail(f"--classifier: cannot write {path}: {err.strerror or err}")
    try:
        return clf.load_classifier(path, device)
    except clf.ClassifierError as err:
        cli.fail(f"--classifier: {err}")


# ---------------------------------------------------------------------------------------------
# Metrics of one image set against a reference


@dataclass
class Reference:
    """The memorisation reference: the model's training images and the real baseline."""

    train_images: np.ndarray  # (M, 28, 28) uint8: the diffusion model's training images
    baseline_nn: np.ndarray  # (K,) NN distances of real images the model never saw
    baseline_kind: str  # "held-out" or "leave-one-out"


@dataclass
class ImageSetMetrics:
    count: int
    frechet_distance: float
    confident_fraction: float
    mean_confidence: float
    class_histogram: list[int]
    class_entropy: float
    nn_median: float | None
    memorisation_ratio: float | None
    label_agreement: float | None = None  # share classified as the requested digit
    label_agreement_per_digit: list[float] | None = None  # the same, for each requested digit 0-9


def image_set_metrics(images: np.ndarray, model: clf.MnistClassifier, ref: Reference | None,
                      real_stats: metrics.GaussianStats, device: torch.device,
                      labels: np.ndarray | None = None) -> ImageSetMetrics:
    out = clf.classify(model, images, device=device)
    agreement = per_digit = None
    if labels is not None:
        hit = out.probs.argmax(1) == labels
        agreement = float(np.mean(hit))
        per_digit = [float(np.mean(hit[labels == d])) if np.any(labels == d) else float("nan")
                     for d in range(10)]
    fd = metrics.frechet_distance_of(metrics.gaussian_statistics(out.features), real_stats)
    cls = metrics.class_statistics(out.probs, CONFIDENCE)
    nn_median = ratio = None
    if ref is not None:
        nn_median = float(np.median(metrics.nearest_neighbour_distances(images, ref.train_images)))
        ratio = nn_median / float(np.median(ref.baseline_nn))
    return ImageSetMetrics(len(images), fd, cls.confident_fraction, cls.mean_confidence,
                           cls.histogram, cls.entropy, nn_median, ratio, agreement, per_digit)


def make_reference(train_images: np.ndarray, held_out: np.ndarray, seed: int) -> Reference:
    """The memorisation baseline: NN distances of up to 2000 held-out real images to the
    training images, or (none held out) leave-one-out distances inside the training images."""
    rng = np.random.default_rng(seed)
    if len(held_out):
        pick = rng.choice(len(held_out), min(BASELINE_IMAGES, len(held_out)), replace=False)
        nn = metrics.nearest_neighbour_distances(held_out[np.sort(pick)], train_images)
        kind = "held-out"
    else:  # leave-one-out: each picked image against all the other training images
        pick = np.sort(rng.choice(len(train_images), min(BASELINE_IMAGES, len(train_images)),
                                  replace=False))
        rest = np.setdiff1d(np.arange(len(train_images)), pick)
        nn = metrics.nearest_neighbour_distances(train_images[pick], train_images[pick],
                                                 exclude_self=True)
        if len(rest):
            nn = np.minimum(nn, metrics.nearest_neighbour_distances(train_images[pick],
                                                                    train_images[rest]))
        kind = "leave-one-out"
    return Reference(train_images, nn, kind)


# ---------------------------------------------------------------------------------------------
# NLL via the variational bound


@dataclass
class NllResult:
    images: int
    bits_per_dim: float  # mean over images
    stderr: float | None  # standard error of that mean over images (None for one image)
    prior_bpd: float  # L_T
    diffusion_bpd: float  # Σ L_{t-1}, t > 1
    decoder_bpd: float  # L_0
    seconds: float


@torch.inference_mode()
def nll_bits_per_dim(model: Callable, diffusion: Diffusion, images: np.ndarray, batch_size: int = 64,
                     seed: int = 0, device: torch.device | str = "cpu",
                     progress: bool = False) -> NllResult:
    """Bits/dim of uint8 images (N, 28, 28) under the bound L = L_T + Σ L_{t-1} + L_0.

    Data as in Ho et al. (2020) §3.3: pixels scaled to [-1, 1], L_0 the discretised Gaussian
    decoder over 256 bins. One x_t ~ q(x_t|x0) per image and step (seeded), the model's x̂0
    clipped to [-1, 1], p_θ(x_{t-1}|x_t) = N(μ̃(x̂0, x_t), β̃_t) (fixed variance, log β̃ clipped
    at t = 0 as in the core). All terms in float64 from diffusion_core.likelihood.
    """
    from nets.data import to_training_tensor

    schedule = diffusion.schedule
    T = schedule.num_timesteps
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    per_image, parts = [], np.zeros(3)
    t0 = time.perf_counter()
    for start in range(0, len(images), batch_size):
        x0 = to_training_tensor(np.asarray(images[start:start + batch_size]), device)  # (B,1,H,W)
        x0_np = x0.double().cpu().numpy()
        b = len(x0)
        prior = core.prior_kl(schedule, x0_np).reshape(b, -1).sum(1)  # L_T, nats (B,)
        steps, decoder = np.zeros(b), np.zeros(b)
        for t in reversed(range(T)):
            t_vec = torch.full((b,), t, dtype=torch.long, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            xt = diffusion.q_sample(x0, t_vec, noise)
            x0_hat = diffusion.predict_x0(xt, t_vec, model(xt, t_vec).float()).clamp(-1.0, 1.0)
            xt_np, t_np = xt.double().cpu().numpy(), np.full(b, t, dtype=np.int64)
            mean = core.q_posterior_mean_variance(schedule, x0_hat.double().cpu().numpy(),
                                                  xt_np, t_np).mean
            log_var = schedule.posterior_log_variance_clipped[t]
            term = core.vb_term(schedule, x0_np, xt_np, t_np, mean, log_var)
            nats = term.reshape(b, -1).sum(1)
            if t == 0:
                decoder += nats
            else:
                steps += nats
        dims = x0[0].numel() * math.log(2.0)
        per_image.append((prior + steps + decoder) / dims)
        parts += [prior.sum() / dims, steps.sum() / dims, decoder.sum() / dims]
        if progress:
            done = start + b
            print(f"NLL: {done}/{len(images)} images, "
                  f"{done / (time.perf_counter() - t0):.2f} images/s", file=sys.stderr, flush=True)
    bpd = np.concatenate(per_image)
    n = len(bpd)
    return NllResult(n, float(bpd.mean()), float(bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else
                     None, *(float(p / n) for p in parts), time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Which real images the model trained on


def training_images_of(real: np.ndarray, split: str, data_dir: str | None,
                       checkpoint_cfg: dict | None, train_images: int | None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(images the diffusion model trained on, real images it never saw, a description).

    With a checkpoint its config says (split, --limit); otherwise ``--train-images N`` says the
    first N of the split; otherwise the whole split is taken as the training set.
    """
    if checkpoint_cfg is not None:
        tsplit, limit = checkpoint_cfg.get("split", split), checkpoint_cfg.get("limit")
        if tsplit == split:
            n = len(real) if limit is None else min(int(limit), len(real))
            return real[:n], real[n:], f"MNIST {split}[:{n}] (from the checkpoint's config)"
        from nets import data as mnist
        try:
            other = mnist.load_mnist(data_dir or mnist.default_data_dir(), tsplit).images
        except (mnist.MnistUnavailableError, mnist.MnistFormatError) as err:
            cli.fail(f"memorisation: the checkpoint trained on MNIST {tsplit}, which is not "
                     f"available: {str(err).splitlines()[0]}")
        n = len(other) if limit is None else min(int(limit), len(other))
        return other[:n], real, f"MNIST {tsplit}[:{n}] (from the checkpoint's config)"
    if train_images is not None:
        n = min(train_images, len(real))
        return real[:n], real[n:], f"MNIST {split}[:{n}] (--train-images)"
    return real, real[:0], f"all of MNIST {split} (assumed; pass --checkpoint or --train-images)"


# ---------------------------------------------------------------------------------------------
# Calibration: the metrics on real, degraded and fake image sets


def calibration_sets(held_out: np.ndarray, train: np.ndarray, seed: int
                     ) -> list[tuple[str, np.ndarray]]:
    """Image sets whose metrics bracket the range: real, blurred, noisy, noise, copies."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    unit = held_out.astype(np.float64) / 255.0

    def to_u8(x):
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    def blur(sigma):
        return to_u8(gaussian_filter(unit, sigma=(0, sigma, sigma)))

    def noisy(sigma):
        return to_u8(unit + sigma * rng.standard_normal(unit.shape))

    n = len(held_out)
    gauss = rng.standard_normal(held_out.shape)  # x_T of an untrained sampler, in [-1, 1]
    return [
        (f"real held-out (n={n})", held_out),
        ("real held-out (n=1000)", held_out[:1000]),
        ("real held-out (n=200)", held_out[:200]),
        ("blur σ=1 px", blur(1.0)),
        ("blur σ=2 px", blur(2.0)),
        ("noise σ=0.1", noisy(0.1)),
        ("noise σ=0.3", noisy(0.3)),
        ("pure noise uniform", rng.integers(0, 256, held_out.shape, dtype=np.uint8)),
        ("pure noise N(0,1) in [-1,1]", to_u8(np.clip((gauss + 1) / 2, 0, 1))),
        ("copies of training images", train[:1000]),
    ]


# ---------------------------------------------------------------------------------------------
# The command line


def build_parser() -> cli.Parser:
    p = cli.Parser(prog="python -m nets.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=Path, help="the .npz written by nets.sample (uint8 "
                   "'images' (N, 28, 28))")
    p.add_argument("--calibrate", action="store_true",
                   help="instead of samples: the metrics of real, blurred, noisy and noise "
                        "images (the docs/evaluation.md table)")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files; default: $DDPM_DATA_DIR "
                   "or ~/.cache/ddpm/mnist")
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="real images to compare with")
    p.add_argument("--json", type=Path, help="write the results here (default: beside the "
                   "samples as <name>.eval.json; calibration: no file)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="the classifier file (default: $DDPM_CLASSIFIER or "
                        "~/.cache/ddpm/classifier.pt); trained and saved there if missing")
    p.add_argument("--no-train-classifier", dest="train_classifier", action="store_false",
                   help="if the classifier is missing, exit 2 with the command to train it")
    p.add_argument("--checkpoint", type=cli.existing_path,
                   help="the model's run directory or checkpoint: its training images (for "
                        "memorisation) and the NLL")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="with --checkpoint: weights for the NLL")
    p.add_argument("--nll-images", type=cli.int_at_least(0),
                   help=f"with --checkpoint: real images for the NLL (default "
                        f"{DEFAULT_NLL_IMAGES}; 0 skips it; T model calls per batch)")
    p.add_argument("--nll-batch-size", type=cli.positive_int, default=64,
                   help="images per NLL batch")
    p.add_argument("--train-images", type=cli.positive_int,
                   help="without --checkpoint: the model trained on the first N images of "
                        "--split (default: all of it)")
    p.add_argument("--seed", type=int, default=0, help="seed of subsets and NLL noise")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.calibrate == (args.samples is not None):
        parser.error("give exactly one of --samples FILE.npz and --calibrate")
    if args.nll_images is not None and args.checkpoint is None:
        parser.error("argument --nll-images: needs --checkpoint")
    if args.calibrate and args.checkpoint is not None:
        parser.error("argument --checkpoint: not used with --calibrate")
    t_start = time.perf_counter()
    device = cli.pick_device(args.device)

    samples, meta, labels = None, {}, None
    if args.samples is not None:
        try:
            samples, meta, labels = load_samples(args.samples)
        except SamplesError as err:
            cli.fail(f"--samples: {err}")
    loaded = None
    if args.checkpoint is not None:
        from nets.sample import load_model
        try:
            loaded = load_model(args.checkpoint, args.weights, device)
        except CheckpointError as err:
            cli.fail(f"--checkpoint: {err}")

    from nets import data as mnist
    try:
        real = mnist.load_mnist(args.data_dir or mnist.default_data_dir(), args.split)
    except (mnist.MnistUnavailableError, mnist.MnistFormatError) as err:
        cli.fail(str(err))
    classifier_path = args.classifier or clf.default_classifier_path()
    model, info = load_or_train_classifier(classifier_path, real.images, real.labels,
                                           args.split, args.data_dir, args.train_classifier,
                                           device)
    real_features = clf.classify(model, real.images, device=device).features

    if args.calibrate:
        report = calibrate(real.images, real_features, model, args, device)
        report["classifier"] = {"path": str(classifier_path), **info}
        print_calibration(report)
    else:
        report = evaluate_samples(samples, meta, labels, real.images, real_features, model,
                                  loaded, args, device)
        report["classifier"] = {"path": str(classifier_path), **info}
        print_report(report)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    json_path = args.json
    if json_path is None and args.samples is not None:
        json_path = args.samples.with_name(f"{args.samples.stem}.eval.json")
    if json_path is not None:
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=1) + "\n")
        except OSError as err:
            cli.fail(f"--json: cannot write {json_path}: {err.strerror or err}")
        print(f"results written to {json_path}", file=sys.stderr)
    return 0


def evaluate_samples(samples, meta, labels, real_images, real_features, model, loaded, args,
                     device) -> dict:
    real_stats = metrics.gaussian_statistics(real_features)
    train, held_out, described = training_images_of(
        real_images, args.split, args.data_dir, loaded.config if loaded else None,
        args.train_images)
    ref = make_reference(train, held_out, args.seed)
    t0 = time.perf_counter()
    gen = image_set_metrics(samples, model, ref, real_stats, device, labels)
    eval_seconds = time.perf_counter() - t0
    # The floor for comparison: a real subset of the samples' size against the other real images.
    rng = np.random.default_rng(args.seed)
    n_floor = min(len(samples), len(real_images) // 2)
    pick = rng.permutation(len(real_images))
    floor_stats = metrics.gaussian_statistics(real_features[pick[n_floor:]])
    floor_out = clf.classify(model, real_images[pick[:n_floor]], device=device)
    floor_cls = metrics.class_statistics(floor_out.probs, CONFIDENCE)
    floor = {
        "count": n_floor,
        "frechet_distance": metrics.frechet_distance_of(
            metrics.gaussian_statistics(floor_out.features), floor_stats),
        "confident_fraction": floor_cls.confident_fraction,
        "mean_confidence": floor_cls.mean_confidence,
        "class_entropy": floor_cls.entropy,
        "nn_median": float(np.median(ref.baseline_nn)),
    }
    report = {
        "samples": {"path": str(args.samples), **meta},
        "real": {"split": args.split, "count": len(real_images)},
        "metrics": asdict(gen),
        "real_floor": floor,
        "memorisation": {"training_images": described, "training_count": len(train),
                         "baseline": ref.baseline_kind, "baseline_count": len(ref.baseline_nn)},
        "max_class_entropy": metrics.MAX_ENTROPY_10,
        "eval_images_per_second": len(samples) / max(eval_seconds, 1e-9),
    }
    n_nll = DEFAULT_NLL_IMAGES if args.nll_images is None else args.nll_images
    if loaded is not None and n_nll:
        source, which = (held_out, "held-out") if len(held_out) else (train, "training")
        if source is held_out and len(held_out) < n_nll:
            source, which = train, "training"
        n_nll = min(n_nll, len(source))
        print(f"NLL on {n_nll} {which} images: {loaded.diffusion.num_timesteps} model calls "
              f"per batch of {args.nll_batch_size}", file=sys.stderr)
        nll = nll_bits_per_dim(loaded.model, loaded.diffusion, source[:n_nll],
                               args.nll_batch_size, args.seed, device, progress=True)
        report["nll"] = {**asdict(nll), "which": which, "checkpoint": str(loaded.path),
                         "weights": args.weights, "timesteps": loaded.diffusion.num_timesteps}
    return report


def calibrate(real_images, real_features, model, args, device) -> dict:
    """Split the real images into random halves A (reference, 'training set') and B."""
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(real_images))
    half = len(order) // 2
    a, b = np.sort(order[:half]), np.sort(order[half:])
    stats_a = metrics.gaussian_statistics(real_features[a])
    ref = make_reference(real_images[a], real_images[b], args.seed)
    rows = []
    for name, images in calibration_sets(real_images[b], real_images[a], args.seed):
        m = image_set_metrics(images, model, ref, stats_a, device)
        rows.append({"set": name, **asdict(m)})
        print(f"  {name}: done", file=sys.stderr, flush=True)
    nll = nll_calibration(real_images[b][:DEFAULT_NLL_IMAGES], args.seed)
    return {"calibration": rows, "real": {"split": args.split, "count": len(real_images),
                                          "reference_half": half},
            "baseline_nn_median": float(np.median(ref.baseline_nn)),
            "max_class_entropy": metrics.MAX_ENTROPY_10, "nll_calibration": nll}


def nll_calibration(images: np.ndarray, seed: int, T: int = 1000) -> dict:
    """Bits/dim of real images under the default schedule (linear, T = 1000) for two denoisers
    that bracket every trained model: ε̂ = 0 (knows nothing) and an oracle that is handed x0
    (every KL term vanishes, leaving the bound's floor L_T + L_0)."""
    from nets.data import to_training_tensor
    from nets.diffusion import extract

    diffusion = Diffusion(core.DiffusionSchedule.from_betas(core.make_betas("linear", T)))
    x0 = to_training_tensor(np.asarray(images))

    def zero(x, t):
        return torch.zeros_like(x)

    def oracle(x, t):  # ε = (x_t − √ᾱ x0)/√(1−ᾱ), Ho et al. (2020) eq. 4 solved for ε
        return ((x - extract(diffusion.sqrt_alphas_cumprod, t, x) * x0)
                / extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x))

    out = {"images": len(images), "timesteps": T, "uniform_over_256_levels": 8.0}
    for name, model in (("eps_zero", zero), ("oracle_x0", oracle)):
        r = nll_bits_per_dim(model, diffusion, images, batch_size=len(images), seed=seed)
        out[name] = {"bits_per_dim": r.bits_per_dim, "prior_bpd": r.prior_bpd,
                     "diffusion_bpd": r.diffusion_bpd, "decoder_bpd": r.decoder_bpd}
    return out


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    m, f, s = report["metrics"], report["real_floor"], report["samples"]
    rows = [
        ("Fréchet distance (classifier features)", _fmt(m["frechet_distance"], ".3f"),
         _fmt(f["frechet_distance"], ".3f")),
        (f"recognised, confidence ≥ {CONFIDENCE}", f"{100 * m['confident_fraction']:.1f}%",
         f"{100 * f['confident_fraction']:.1f}%"),
        ("mean confidence", f"{m['mean_confidence']:.3f}", f"{f['mean_confidence']:.3f}"),
        (f"class entropy (nats; max {metrics.MAX_ENTROPY_10:.3f})", f"{m['class_entropy']:.3f}",
         f"{f['class_entropy']:.3f}"),
        ("NN distance to training images (median)", _fmt(m["nn_median"], ".3f"),
         _fmt(f["nn_median"], ".3f")),
        ("memorisation ratio (samples / real)", _fmt(m["memorisation_ratio"], ".3f"), "1"),
    ]
    if m.get("label_agreement") is not None:  # real: the classifier's held-out accuracy
        accuracy = report.get("classifier", {}).get("held_out_accuracy")
        rows.append(("classified as the requested digit", f"{100 * m['label_agreement']:.1f}%",
                     "—" if accuracy is None else f"{100 * accuracy:.1f}%"))
        rows += [(f"  requested digit {d}", f"{100 * a:.1f}%", "")
                 for d, a in enumerate(m["label_agreement_per_digit"]) if a == a]
    print(f"{'metric':<42}{'samples':>12}{'real':>12}")
    print(f"{'images':<42}{m['count']:>12}{f['count']:>12}")
    for name, a, b in rows:
        print(f"{name:<42}{a:>12}{b:>12}")
    print("class histogram (0-9): " + " ".join(map(str, m["class_histogram"])))
    mem = report["memorisation"]
    print(f"training images: {mem['training_images']}; real baseline: {mem['baseline']} "
          f"({mem['baseline_count']} images)")
    if "nll" in report:
        n = report["nll"]
        print(f"NLL: {n['bits_per_dim']:.3f} ± {_fmt(n['stderr'], '.3f')} bits/dim on {n['images']} "
              f"{n['which']} real images (L_T {n['prior_bpd']:.4f}, Σ L_t-1 "
              f"{n['diffusion_bpd']:.3f}, L_0 {n['decoder_bpd']:.3f}; {n['seconds']:.1f}s)")
    if "images_per_second" in s:
        what = f"{s.get('sampler', '?')} {s.get('steps', '?')} steps"
        if s.get("sampler") == "ddim":
            what += f", eta {s.get('eta', 0):g}"
        print(f"sampler: {what}: {s['images_per_second']:.2f} images/s on "
              f"{s.get('device', '?')}")
    print(f"evaluation: {report['eval_images_per_second']:.1f} images/s")


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


if __name__ == "__main__":
    raise SystemExit(main())
