"""The short way in from Python: load a trained run once, then sample, edit and evaluate.

    import nets
    pipe = nets.load("runs/<name>")                     # EMA weights; device, precision: auto
    digits = pipe.sample(16, label=7, guidance=2).images  # (16, 28, 28) uint8, 0 black, 255 white
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
from nets.data import ImageSet, load_dataset
from nets.device import autocast_dtype, describe_precision, pick_device, precision_name
from nets.editing.inpaint import InpaintSettings, inpaint
from nets.editing.inversion import decode, interpolate, invert
from nets.evaluation.scoring import (
    EvaluationReport,
    Judge,
    RealData,
    ScoreOptions,
    check_samples,
    make_judge,
    score_samples,
)
from nets.fields import ConfigError
from nets.pixels import check_layout, images_to_uint8, to_training_tensor
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
LABEL_REQUESTS = ("all", "frequencies")  # besides a class (its name or index)


class DistilledStepsWarning(UserWarning):
    """A distilled student asked to run a chain it was not distilled for (or a consistency model
    asked for another sampler): it runs, but only its own chain was trained (``nets.distill``)."""


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
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's images."""
        return self.loaded.model.config.image_shape

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the classes a conditional model is asked for (the dataset's)."""
        return self.loaded.dataset.class_names

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
        if m.consistency is not None:
            calls = m.consistency.calls
            kind = f", a consistency model ({calls} call{'s' if calls > 1 else ''} by default)"
        return (f"{m.path} (step {m.step}, {m.weights} weights, T={m.diffusion.num_timesteps}{kind}); "
                f"device {self.device}, {describe_precision(self.autocast_dtype)}")

    @property
    def default_sampler(self) -> SamplerSettings:
        """What :meth:`sample` runs unless told: ``SamplerSettings()`` (SDE-DPM-Solver++ 2M, 20
        steps), for a distilled student the DDIM (η = 0) chain it was distilled for, for a
        consistency model multistep consistency sampling at its recorded calls."""
        distilled, consistency = self.loaded.distilled, self.loaded.consistency
        if consistency is not None:
            return self.consistency_sampler(consistency.calls)
        return SamplerSettings() if distilled is None else SamplerSettings("ddim", steps=distilled.steps)

    def consistency_sampler(self, calls: int | None = None) -> SamplerSettings:
        """Consistency sampling at ``calls`` (None: the model's default) at the times its checkpoint
        records for that many calls, else the core's rule (``core.consistency_timesteps``)."""
        record = self.loaded.consistency
        calls = calls or (record.calls if record is not None else None)
        times = None if record is None or calls is None else record.times.get(calls)
        return SamplerSettings("consistency", steps=calls, times=times)

    def sampler_warning(self, sampler: SamplerSettings) -> str | None:
        """Why ``sampler`` is not what this distilled student (or consistency model) was trained
        for (None: it is, or the model is neither). A warning, not a refusal: the student still
        denoises at every t, and comparing it off its steps is a fair question to ask of it."""
        if self.loaded.consistency is not None:
            if sampler.sampler == "consistency":
                return None
            return (f"{self.loaded.path} is a consistency model: it was tuned to map any noise level "
                    f"straight to the data, not for {sampler.sampler}'s steps, so its samples may be "
                    f"worse (the default, no sampler given, is consistency sampling; --steps K: K calls)")
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

    def sample(self, n: int = 64, *, label: int | str | None = None, guidance: float | None = None,
               sampler: SamplerSettings | None = None, seed: int = 0,
               options: SampleOptions | None = None, digit: int | str | None = None) -> Generated:
        """``n`` images (``.images`` uint8 (n, H, W), or (n, H, W, 3) for colour; ``.labels`` of a
        conditional model; ``.as_tensor()`` in [-1, 1]) from the reverse chain of ``sampler`` (default
        :attr:`default_sampler`: SDE-DPM-Solver++ 2M at 20 steps, the best measured per network
        call, or a distilled student's own DDIM steps; ``SamplerSettings("ddpm")`` is the paper's
        chain over all T), seeded by ``seed``. A distilled student run on another chain warns
        (:class:`DistilledStepsWarning`).

        A conditional model is asked for ``label``: a class of its dataset by name ("sneaker") or
        index (7; for MNIST the digit), "all" (each class in turn) or "frequencies" (drawn from its
        training class frequencies: p(x); the default where the checkpoint records them, else
        "all"), with classifier-free guidance w = ``guidance`` (1: the plain conditional model).
        ``digit`` is the same as ``label`` (its name before datasets other than MNIST). An
        unconditional model takes neither.
        """
        if not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        label = _one_label(label, digit)
        sampler = self._resolved(sampler or self.default_sampler)
        options = options or SampleOptions(progress=self.progress)
        coeffs = self._coefficients(sampler)
        self._warn_off_steps(sampler)
        cond = self.conditioning(n, label, guidance, seed)
        generated = generate(self.net, coeffs, n, seed, cond, options)
        generated.settings = {**sampler.record(coeffs.num_steps), **self._record(label, cond), "seed": seed,
                              "batch_size": options.batch_size, "cuda_graph": options.cuda_graph}
        return generated

    def describe_sampler(self, sampler: SamplerSettings) -> str:
        """``sampler`` on this model in one line (its step count, and consistency times, resolved)."""
        sampler = self._resolved(sampler)
        return sampler.describe(self._coefficients(sampler).num_steps)

    def _resolved(self, sampler: SamplerSettings) -> SamplerSettings:
        """``sampler`` with consistency sampling's times resolved on this model: those its
        checkpoint records for that many calls, else the core's rule."""
        if sampler.sampler != "consistency" or sampler.times is not None:
            return sampler
        schedule = self.loaded.diffusion.schedule
        recorded = self.consistency_sampler(sampler.steps_for(schedule.num_timesteps))
        times = recorded.times or tuple(int(t) for t in sampler.consistency_times(schedule))
        return replace(sampler, steps=len(times), times=times)

    def conditioning(self, n: int, label: int | str | None = None, guidance: float | None = None,
                     seed: int = 0) -> Conditioning:
        """The labels and guidance of ``n`` samples (see :meth:`sample`); "frequencies" draws the
        labels with ``seed``."""
        if self.guide is not None and guidance is not None:
            raise ConfigError("guidance", "an autoguided model's weight is set by with_guide, not guidance")
        if not self._takes_labels(label, guidance):
            return Conditioning()
        request = self._label_request(label)
        if request == "frequencies":
            if self.loaded.class_counts is None:
                raise ConfigError("label", f"{self.loaded.path} does not record its training set's "
                                  f"class counts (written by an older version); ask for 'all' "
                                  f"(--class all)")
            labels = labels_from_frequencies(n, self.loaded.class_counts, seed)
        else:
            labels = class_labels(n, request if request == "all" else self.class_index(request),
                                  len(self.class_names))
        return Conditioning(labels, None if self.guide is not None else guidance)

    def class_index(self, label: int | str) -> int:
        """The index of the class ``label`` names: a class name of the dataset (first), else an
        index 0..K-1; ConfigError("label") listing the classes otherwise."""
        return class_index(label, self.class_names)

    def _label_request(self, label: int | str | None) -> str:
        """A class, "all" or "frequencies"; the default: frequencies where counts are recorded."""
        if label is None:
            return "all" if self.loaded.class_counts is None else "frequencies"
        text = str(label)
        if text not in LABEL_REQUESTS:
            self.class_index(text)
        return text

    def _takes_labels(self, label, guidance) -> bool:
        """Whether the model is conditional; an unconditional one refuses a class or guidance."""
        if not self.conditional and (label is not None or guidance is not None):
            which = "label" if label is not None else "guidance"
            raise ConfigError(which, f"{self.loaded.path} is an unconditional model (trained without "
                              f"--conditional or on unlabelled images); it cannot be asked for a class "
                              f"or guidance")
        return self.conditional

    def _label(self, label: str) -> str | None:
        return label if self.progress else None

    def _coefficients(self, sampler: SamplerSettings) -> DeviceCoefficients:
        return DeviceCoefficients(sampler.table(self.loaded.diffusion.schedule)).to(self.device)

    def _record(self, label, cond: Conditioning) -> dict:
        """What the samples were asked of which model, as saved beside them."""
        m = self.loaded
        out = {"weights": m.weights, "checkpoint": str(m.path), "checkpoint_step": m.step,
               "device": str(self.device), "precision": precision_name(self.autocast_dtype)}
        out["dataset"] = m.dataset.name
        if self.conditional:
            out["guidance"] = 1.0 if cond.guidance is None else float(cond.guidance)
            out["label"] = self._label_request(label)
            if m.dataset.name == "mnist":
                out["digit"] = out["label"]  # the key's name before other datasets
            out["class_names"] = list(self.class_names)
        if self.guide is not None:
            out.update(guide_model=str(self.guide.path), guide_step=self.guide.step,
                       autoguidance=self.guide_weight)
        return out

    # ---- editing real digits ------------------------------------------------------------------

    def invert(self, images: np.ndarray, *, steps: int = EDIT_STEPS, digit: int | str | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """uint8 images in the pixel layout (N, H, W[, 3]) → their latents x_T (N, C, H, W) by
        deterministic DDIM inversion over ``steps``; :meth:`decode` takes them back.
        ``digit``/``guidance``: the class (and CFG w) of a conditional model, else its "no label"."""
        x0 = to_training_tensor(self.check_images(images, "images"), self.device)
        self._warn_off_steps(SamplerSettings("ddim", steps=_check_steps(steps)))
        options = replace(self.edit_options(len(x0), digit, guidance), progress=self._label("inverting step"))
        with torch.inference_mode():
            return invert(self.net, x0, _check_steps(steps), options)

    def decode(self, latents: torch.Tensor, *, steps: int = EDIT_STEPS, digit: int | str | None = None,
               guidance: float | None = None) -> np.ndarray:
        """Latents x_T (N, C, H, W) → uint8 images (N, H, W[, 3]) by DDIM (η = 0) over ``steps``."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.shape:
            raise ValueError(f"latents must have shape (N, {', '.join(map(str, self.shape))}), got "
                             f"{tuple(latents.shape)}")
        self._warn_off_steps(SamplerSettings("ddim", steps=_check_steps(steps)))
        options = replace(self.edit_options(len(latents), digit, guidance),
                          progress=self._label("decoding step"))
        with torch.inference_mode():
            out = decode(self.net, latents.to(self.device, torch.float32), _check_steps(steps), options)
        return images_to_uint8(out)

    def interpolate(self, a: int | np.ndarray, b: int | np.ndarray, *, frames: int = 9,
                    steps: int = EDIT_STEPS, digit: int | str | None = None,
                    guidance: float | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 frames (F, H, W[, 3]), their latents (F, C, H, W)): the slerp path from ``a`` to
        ``b``, both seeds of x_T or both uint8 images (then their inverted latents)."""
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (the two ends), got {frames}")
        if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
            ends = [torch.randn((1, *self.shape), generator=torch.Generator(self.device).manual_seed(int(s)),
                                device=self.device) for s in (a, b)]
        else:
            latents = self.invert(np.stack([np.asarray(a), np.asarray(b)]), steps=steps, digit=digit,
                                  guidance=guidance)
            ends = [latents[:1], latents[1:]]
        path = interpolate(ends[0][0], ends[1][0], frames)
        return self.decode(path, steps=steps, digit=digit, guidance=guidance), path

    def inpaint(self, image: np.ndarray, known: np.ndarray, *, settings: InpaintSettings | None = None,
                digit: int | str | None = None, guidance: float | None = None, seed: int = 0) -> np.ndarray:
        """``settings.n`` completions (n, H, W[, 3]) uint8 of the uint8 ``image`` (H, W[, 3])
        whose ``known`` (H, W) bool pixels are kept exactly (RePaint, ``nets.editing.inpaint``)."""
        settings = settings or InpaintSettings(progress=self.progress)
        self._warn_off_steps(SamplerSettings("ddpm", steps=settings.steps))
        image = self.check_images(np.asarray(image)[None], "image")[0]
        known = np.asarray(known)
        if known.shape != self.shape[1:] or known.dtype != bool:
            raise ValueError(f"known must be a {self.shape[1:]} bool mask, got {known.dtype} {known.shape}")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return inpaint(self.net, image, known, gen, settings,
                       self.edit_options(settings.n, digit, guidance))

    def edit_options(self, n: int, label: int | str | None, guidance: float | None) -> ChainOptions:
        """The chain options of ``n`` edited images: a conditional model decodes under the class
        ``label`` (CFG w = ``guidance``), or "no label"; an unconditional one refuses both."""
        if not self._takes_labels(label, guidance):
            return ChainOptions()
        if label is None:
            if guidance is not None:
                raise ConfigError("guidance", "needs a class (the label to guide towards)")
            return ChainOptions(y=torch.full((n,), len(self.class_names), device=self.device))
        return ChainOptions(y=torch.full((n,), self.class_index(label), device=self.device),
                            guidance=None if guidance in (None, 1.0) else guidance)

    def check_images(self, images: np.ndarray, what: str) -> np.ndarray:
        """``images`` as uint8 in this model's pixel layout; ValueError naming both shapes."""
        try:
            return check_layout(images, what, self.shape)
        except ValueError as err:
            raise ValueError(f"{err}: this model was trained on {self.loaded.dataset.describe()}") from None

    def real_images(self, split: str = "test", data_dir: str | os.PathLike | None = None, *,
                    dataset: str | None = None) -> ImageSet:
        """Real images of the dataset the checkpoint records, read as the run read them (its size
        and channels; a named set's ``split`` from ``data_dir``, default the run's own), or of
        ``dataset``, which must then have this model's image shape (ValueError naming both)."""
        own = self.loaded.dataset
        if dataset is None or dataset == own.name:
            cfg = self.loaded.config
            folder = data_dir if data_dir is not None else cfg.get("data_dir")
            return load_dataset(own.name, folder, split, self.shape[1], self.shape[0])
        other = load_dataset(dataset, data_dir, split)
        if other.info.shape != self.shape:
            raise ValueError(f"{other.info.describe()} does not have the image shape of this model, "
                             f"trained on {own.describe()}")
        return other

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self, images: np.ndarray | Generated, labels: np.ndarray | None = None, *,
                 judge: Judge | None = None, data_dir: str | os.PathLike | None = None,
                 options: ScoreOptions | None = None, about: dict | None = None) -> EvaluationReport:
        """The report of uint8 ``images`` (N ≥ 2, in the model's pixel layout), or of what
        :meth:`sample` returned, against the real images this model never trained on (its
        checkpoint records them), the real-vs-real floor at the same n beside them: Fréchet
        distance, recognised share, memorisation (``nets.evaluation.scoring``); ``about``: how they
        were made, kept in the report (a Generated brings its settings). The real images are the
        test split of the dataset the checkpoint records, from ``data_dir`` (default: the run's
        own, else the download cache), read as the run read them: its held-out rows for a model
        trained on test (or on a folder) with --holdout, all of it for a model trained on train.
        ``judge`` (:func:`nets.evaluation.scoring.make_judge`; it holds the classifier, trained on
        that dataset first if missing) is reused across calls; an unlabelled dataset has none (ValueError).
        ``nets.evaluate --checkpoint`` is this call."""
        if isinstance(images, Generated):
            images, labels, about = images.images, images.labels, {**images.settings, **(about or {})}
        check_samples(images, labels, self.shape, max(len(self.class_names), 1))  # before any data is read
        if judge is None:
            judge = make_judge(device=self.device, real=RealData.of_model(self.loaded, data_dir))
        return score_samples(judge, images, labels, self.loaded, options or ScoreOptions(), about)


def class_index(label: int | str, class_names: tuple[str, ...]) -> int:
    """The index of the class ``label`` names among ``class_names``: a name (first; case
    forgiven where unambiguous), else an index 0..K-1; the one check of a requested class."""
    text = str(label).strip()
    if text in class_names:
        return class_names.index(text)
    folded = [i for i, name in enumerate(class_names) if name.lower() == text.lower()]
    if len(folded) == 1:
        return folded[0]
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
    raise ConfigError("label", f"{label!r} is not a class of this model's dataset: a name ({shown}) or an "
                      f"index 0-{len(class_names) - 1}, or all / frequencies when sampling")


def _one_label(label: int | str | None, digit: int | str | None) -> int | str | None:
    """``label``, or its synonym ``digit``; ConfigError where both are given."""
    if label is not None and digit is not None:
        raise ConfigError("label", "give label or its synonym digit, not both")
    return digit if label is None else label


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int | np.integer) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    return int(steps)


__all__ = ["DistilledStepsWarning", "Pipeline", "load"]
