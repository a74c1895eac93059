"""The short way in from Python: load a trained run once, then sample, edit and evaluate.

    import nets
    pipe = nets.load("runs/<name>")                     # EMA weights; device, precision: auto
    digits = pipe.sample(16, digit=7, guidance=2).images  # (16, 28, 28) uint8, 0 black, 255 white
    fast = pipe.sample(1000, sampler=nets.SamplerSettings("dpmpp-2m", steps=10), seed=1)
    latents = pipe.invert(digits)                       # DDIM inversion; pipe.decode(latents)
    report = pipe.evaluate(fast.images, data_dir="../shared/data/mnist")

Every command is a thin client of these calls: ``nets.sample`` is :meth:`Pipeline.sample` plus
flags and files, ``nets.edit`` the editing methods, ``nets.evaluate --checkpoint`` is
:meth:`Pipeline.evaluate`. Bad input is a ``ValueError`` naming the problem (a checkpoint that
cannot be used: :class:`nets.checkpoint.CheckpointError`, a ValueError too).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from nets.checkpoint import LoadedModel, load_model
from nets.device import autocast_dtype, describe_precision, pick_device, precision_name
from nets.editing.inpaint import InpaintSettings, inpaint
from nets.editing.inversion import decode, interpolate, invert
from nets.evaluation.scoring import (
    EvaluationReport,
    Judge,
    ScoreOptions,
    check_samples,
    make_judge,
    score_samples,
)
from nets.fields import ConfigError
from nets.pixels import IMAGE_SHAPE, IMAGE_SIZE, NUM_CLASSES, images_to_uint8, to_training_tensor
from nets.sampling.batches import Generated, generate
from nets.sampling.guidance import AutoGuided, check_guide_matches
from nets.sampling.settings import (
    ChainOptions,
    Conditioning,
    DeviceCoefficients,
    Network,
    SampleOptions,
    SamplerSettings,
    class_labels,
    labels_from_frequencies,
)

DEFAULT_AUTOGUIDANCE = 2.0
EDIT_STEPS = 50  # DDIM steps of inversion and decoding
DIGIT_REQUESTS = ("all", "frequencies")  # besides a digit 0-9


class DistilledStepsWarning(UserWarning):
    """A distilled student asked to run a chain it was not distilled for: it runs, but only its
    own DDIM steps were trained to match the teacher (``nets.distill``)."""


def load(path: str | os.PathLike, device: str = "auto", precision: str = "auto",
         weights: str = "ema") -> Pipeline:
    """The model of a run directory (``runs/<name>``) or checkpoint file, on ``device`` (auto:
    CUDA, then MPS, then CPU) with the network under ``precision`` (auto: bf16 where the device
    has it natively, else fp32), using its ``weights`` ("ema" or "raw")."""
    dev = pick_device(device)
    return Pipeline(load_model(path, weights, dev), autocast_dtype(precision, dev))


@dataclass(frozen=True)
class Pipeline:
    """A trained model, loaded once: :meth:`sample`, :meth:`invert`, :meth:`decode`,
    :meth:`interpolate`, :meth:`inpaint`, :meth:`evaluate`. ``guide`` (see :meth:`with_guide`)
    guides it by autoguidance with weight ``guide_weight``."""

    loaded: LoadedModel
    autocast_dtype: torch.dtype | None = None
    guide: LoadedModel | None = None
    guide_weight: float | None = None
    progress: bool = False  # a progress line on stderr for every call that loops (see with_progress)

    # ---- what it is -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.loaded.diffusion.device

    @property
    def conditional(self) -> bool:
        return self.loaded.conditional

    @property
    def net(self) -> Network:
        """The network every loop calls: the model, or it guided by ``guide``."""
        model = self.loaded.model
        if self.guide is not None:
            model = AutoGuided(model, self.guide.model, self.guide_weight)
        return Network(model, self.loaded.diffusion, self.autocast_dtype)

    def describe(self) -> str:
        """One line: checkpoint, step, weights, T, device and arithmetic."""
        m = self.loaded
        kind = "" if m.distilled is None else f", distilled for {m.distilled.steps} DDIM steps"
        return (f"{m.path} (step {m.step}, {m.weights} weights, T={m.diffusion.num_timesteps}{kind}); "
                f"device {self.device}, {describe_precision(self.autocast_dtype)}")

    @property
    def default_sampler(self) -> SamplerSettings:
        """What :meth:`sample` runs unless told: ``SamplerSettings()`` (SDE-DPM-Solver++ 2M, 20
        steps), or for a distilled student the DDIM (η = 0) chain it was distilled for."""
        distilled = self.loaded.distilled
        return SamplerSettings() if distilled is None else SamplerSettings("ddim", steps=distilled.steps)

    def sampler_warning(self, sampler: SamplerSettings) -> str | None:
        """Why ``sampler`` is not what this distilled student was trained for (None: it is, or
        the model is not distilled). A warning, not a refusal: the student still denoises at
        every t, and comparing it off its steps is a fair question to ask of it."""
        distilled = self.loaded.distilled
        if distilled is None:
            return None
        steps = tuple(int(t) for t in sorted(sampler.table(self.loaded.diffusion.schedule).timesteps))
        if sampler.sampler == "ddim" and not sampler.eta and steps == distilled.timesteps:
            return None
        return (f"{self.loaded.path} was distilled for DDIM (eta 0) at {distilled.steps} steps; "
                f"{sampler.describe(len(steps))} is not the chain it was trained to match, so its "
                f"digits may be worse (the default, no sampler given, is its own chain)")

    def _warn_off_steps(self, sampler: SamplerSettings) -> None:
        message = self.sampler_warning(sampler)
        if message:
            warnings.warn(message, DistilledStepsWarning, stacklevel=3)

    def with_progress(self, progress: bool = True) -> Pipeline:
        """This pipeline printing the one progress line (on stderr) while it samples or edits."""
        return replace(self, progress=progress)

    def with_guide(self, guide: str | os.PathLike | Pipeline,
                   weight: float = DEFAULT_AUTOGUIDANCE) -> Pipeline:
        """This model autoguided (Karras et al. 2024) by ``guide``, a worse version of it (an
        early checkpoint of its run): ε = ε_guide + w(ε − ε_guide), no labels needed."""
        guide_model = guide.loaded if isinstance(guide, Pipeline) else load_model(guide, self.loaded.weights,
                                                                                   self.device)
        check_guide_matches(self.loaded.config, guide_model.config)
        if not np.isfinite(weight):
            raise ValueError(f"the autoguidance weight must be finite, got {weight}")
        return replace(self, guide=guide_model, guide_weight=float(weight))

    # ---- sampling -----------------------------------------------------------------------------

    def sample(self, n: int = 64, *, digit: int | str | None = None, guidance: float | None = None,
               sampler: SamplerSettings | None = None, seed: int = 0,
               options: SampleOptions | None = None) -> Generated:
        """``n`` digits (``.images`` (n, 28, 28) uint8, ``.labels`` of a conditional model,
        ``.as_tensor()`` in [-1, 1]) from the reverse chain of ``sampler`` (default
        :attr:`default_sampler`: SDE-DPM-Solver++ 2M at 20 steps, the best measured per network
        call, or a distilled student's own DDIM steps; ``SamplerSettings("ddpm")`` is the paper's
        chain over all T), seeded by ``seed``. A distilled student run on another chain warns
        (:class:`DistilledStepsWarning`).

        A conditional model is asked for ``digit``: 0-9, "all" (0, 1, ..., 9 in turn) or
        "frequencies" (drawn from its training class frequencies: p(x); the default where the
        checkpoint records them, else "all"), with classifier-free guidance w = ``guidance``
        (1: the plain conditional model). An unconditional model takes neither.
        """
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        sampler = sampler or self.default_sampler
        options = options or SampleOptions(progress=self.progress)
        coeffs = self._coefficients(sampler)
        self._warn_off_steps(sampler)
        cond = self.conditioning(n, digit, guidance, seed)
        generated = generate(self.net, coeffs, n, seed, cond, options)
        generated.settings = {**sampler.record(coeffs.num_steps), **self._record(digit, cond), "seed": seed,
                              "batch_size": options.batch_size, "cuda_graph": options.cuda_graph}
        return generated

    def describe_sampler(self, sampler: SamplerSettings) -> str:
        """``sampler`` on this model in one line (its step count resolved against T)."""
        return sampler.describe(self._coefficients(sampler).num_steps)

    def conditioning(self, n: int, digit: int | str | None = None, guidance: float | None = None,
                     seed: int = 0) -> Conditioning:
        """The labels and guidance of ``n`` samples (see :meth:`sample`); "frequencies" draws the
        labels with ``seed``."""
        if self.guide is not None and guidance is not None:
            raise ConfigError("guidance", "an autoguided model's weight is set by with_guide, not guidance")
        if not self._takes_labels(digit, guidance):
            return Conditioning()
        request = self._digit_request(digit)
        if request == "frequencies":
            if self.loaded.class_counts is None:
                raise ConfigError("digit", f"{self.loaded.path} does not record its training set's "
                                  f"class counts (written by an older version); ask for digit 'all' "
                                  f"(--digit all)")
            labels = labels_from_frequencies(n, self.loaded.class_counts, seed)
        else:
            labels = class_labels(n, request)
        return Conditioning(labels, None if self.guide is not None else guidance)

    def _digit_request(self, digit: int | str | None) -> str:
        """"0"-"9", "all" or "frequencies"; the default: frequencies where counts are recorded."""
        if digit is None:
            return "all" if self.loaded.class_counts is None else "frequencies"
        return _digit_text(digit, DIGIT_REQUESTS)

    def _takes_labels(self, digit, guidance) -> bool:
        """Whether the model is conditional; an unconditional one refuses a digit or guidance."""
        if not self.conditional and (digit is not None or guidance is not None):
            which = "digit" if digit is not None else "guidance"
            raise ConfigError(which, f"{self.loaded.path} is an unconditional model (trained without "
                              f"--conditional); it cannot be asked for a digit or guidance")
        return self.conditional

    def _label(self, label: str) -> str | None:
        return label if self.progress else None

    def _coefficients(self, sampler: SamplerSettings) -> DeviceCoefficients:
        return DeviceCoefficients(sampler.table(self.loaded.diffusion.schedule)).to(self.device)

    def _record(self, digit, cond: Conditioning) -> dict:
        """What the samples were asked of which model, as saved beside them."""
        m = self.loaded
        out = {"weights": m.weights, "checkpoint": str(m.path), "checkpoint_step": m.step,
               "device": str(self.device), "precision": precision_name(self.autocast_dtype)}
        if self.conditional:
            out["guidance"] = 1.0 if cond.guidance is None else float(cond.guidance)
            out["digit"] = self._digit_request(digit)
        if self.guide is not None:
            out.update(guide_model=str(self.guide.path), guide_step=self.guide.step,
                       autoguidance=self.guide_weight)
        return out

    # ---- editing real digits ------------------------------------------------------------------

    def invert(self, images: np.ndarray, *, steps: int = EDIT_STEPS, digit: int | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """uint8 digits (N, 28, 28) → their latents x_T (N, 1, 28, 28) by deterministic DDIM
        inversion over ``steps``; :meth:`decode` takes them back. ``digit``/``guidance``: the
        label (and CFG w) of a conditional model, else its "no label"."""
        x0 = to_training_tensor(_check_digits(images, "images"), self.device)
        self._warn_off_steps(SamplerSettings("ddim", steps=_check_steps(steps)))
        options = replace(self.edit_options(len(x0), digit, guidance), progress=self._label("inverting step"))
        with torch.inference_mode():
            return invert(self.net, x0, _check_steps(steps), options)

    def decode(self, latents: torch.Tensor, *, steps: int = EDIT_STEPS, digit: int | None = None,
               guidance: float | None = None) -> np.ndarray:
        """Latents x_T (N, 1, 28, 28) → uint8 digits (N, 28, 28) by DDIM (η = 0) over ``steps``."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"latents must have shape (N, 1, 28, 28), got {tuple(latents.shape)}")
        self._warn_off_steps(SamplerSettings("ddim", steps=_check_steps(steps)))
        options = replace(self.edit_options(len(latents), digit, guidance),
                          progress=self._label("decoding step"))
        with torch.inference_mode():
            out = decode(self.net, latents.to(self.device, torch.float32), _check_steps(steps), options)
        return images_to_uint8(out)

    def interpolate(self, a: int | np.ndarray, b: int | np.ndarray, *, frames: int = 9,
                    steps: int = EDIT_STEPS, digit: int | None = None,
                    guidance: float | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 frames (F, 28, 28), their latents (F, 1, 28, 28)): the slerp path from ``a`` to
        ``b``, both seeds of x_T or both uint8 digits (28, 28) (then their inverted latents)."""
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (the two ends), got {frames}")
        if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
            ends = [torch.randn((1, *IMAGE_SHAPE), generator=torch.Generator(self.device).manual_seed(int(s)),
                                device=self.device) for s in (a, b)]
        else:
            latents = self.invert(np.stack([np.asarray(a), np.asarray(b)]), steps=steps, digit=digit,
                                  guidance=guidance)
            ends = [latents[:1], latents[1:]]
        path = interpolate(ends[0][0], ends[1][0], frames)
        return self.decode(path, steps=steps, digit=digit, guidance=guidance), path

    def inpaint(self, image: np.ndarray, known: np.ndarray, *, settings: InpaintSettings | None = None,
                digit: int | None = None, guidance: float | None = None, seed: int = 0) -> np.ndarray:
        """``settings.n`` completions (n, 28, 28) uint8 of the uint8 digit ``image`` (28, 28) whose
        ``known`` (28, 28) bool pixels are kept exactly (RePaint, ``nets.editing.inpaint``)."""
        settings = settings or InpaintSettings(progress=self.progress)
        self._warn_off_steps(SamplerSettings("ddpm", steps=settings.steps))
        image = _check_digits(np.asarray(image)[None], "image")[0]
        known = np.asarray(known)
        if known.shape != (IMAGE_SIZE, IMAGE_SIZE) or known.dtype != bool:
            raise ValueError(f"known must be a (28, 28) bool mask, got {known.dtype} {known.shape}")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return inpaint(self.net, image, known, gen, settings,
                       self.edit_options(settings.n, digit, guidance))

    def edit_options(self, n: int, digit: int | None, guidance: float | None) -> ChainOptions:
        """The chain options of ``n`` edited images: a conditional model decodes under ``digit``
        (CFG w = ``guidance``), or "no label"; an unconditional one refuses both (ValueError)."""
        if not self._takes_labels(digit, guidance):
            return ChainOptions()
        if digit is None:
            if guidance is not None:
                raise ConfigError("guidance", "needs a digit (the label to guide towards)")
            return ChainOptions(y=torch.full((n,), NUM_CLASSES, device=self.device))
        return ChainOptions(y=torch.full((n,), int(_digit_text(digit, ())), device=self.device),
                            guidance=None if guidance in (None, 1.0) else guidance)

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self, images: np.ndarray | Generated, labels: np.ndarray | None = None, *,
                 judge: Judge | None = None, data_dir: str | os.PathLike | None = None,
                 options: ScoreOptions | None = None, about: dict | None = None) -> EvaluationReport:
        """The report of uint8 ``images`` (N ≥ 2, 28, 28), or of what :meth:`sample` returned,
        against the real digits this model never trained on (its checkpoint records them), the
        real-vs-real floor at the same n beside them: Fréchet distance, recognised share,
        memorisation (``nets.evaluation.scoring``); ``about``: how they were made, kept in the
        report (a Generated brings its settings). The real digits are MNIST test of ``data_dir``
        (default: the run's own, else $DDPM_DATA_DIR or the download cache): its held-out rows for
        a model trained on test with --holdout, all of it for a model trained on train. ``judge``
        (:func:`nets.evaluation.scoring.make_judge`; it holds the classifier, $DDPM_CLASSIFIER or
        ~/.cache/ddpm/classifier.pt, trained first if missing) is reused across calls.
        ``nets.evaluate --checkpoint`` is this call."""
        if isinstance(images, Generated):
            images, labels, about = images.images, images.labels, {**images.settings, **(about or {})}
        check_samples(images, labels)  # before any data is read
        if judge is None:
            own = data_dir if data_dir is not None else self.loaded.config.get("data_dir")
            judge = make_judge(own, "test", device=self.device)
        return score_samples(judge, images, labels, self.loaded, options or ScoreOptions(), about)


def _digit_text(digit: int | str, words: tuple[str, ...]) -> str:
    """``digit`` as "0"-"9" or one of ``words`` ("all", "frequencies" where sampling takes them);
    the one check of a requested digit."""
    text = str(digit)
    if text not in words and text not in [str(d) for d in range(NUM_CLASSES)]:
        expected = "0-9" + "".join(f", {w}" for w in words[:-1]) + (f" or {words[-1]}" if words else "")
        raise ConfigError("digit", f"expected {expected}, got {digit!r}")
    return text


def _check_digits(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{what} must be uint8 digits (N, 28, 28), got {images.dtype} {images.shape}")
    return images


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int | np.integer) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    return int(steps)


__all__ = ["DistilledStepsWarning", "Pipeline", "load"]
