"""PyTorch side of the DDPM package: the U-Net, training, sampling, editing and evaluation.

From Python, one import does it (docs/api.md)::

    import nets
    run = nets.fit(nets.TrainConfig(max_minutes=10))  # train; nets.resume(run, ...) continues it
    pipe = nets.load(run)
    digits = pipe.sample(16, digit=7, guidance=2).images  # (16, 28, 28) uint8
    fast = nets.distill(nets.DistillConfig(teacher=run, run_dir="runs/fast", to_steps=4))

All diffusion math comes from :mod:`diffusion_core` (float64 NumPy); this package only turns its
tables into tensors (:func:`nets.diffusion.extract`) and runs networks. Commands (thin: flags →
library → report): ``python -m nets.train``, ``nets.distill``, ``nets.sample``, ``nets.edit``,
``nets.evaluate``, ``nets.train_classifier``. docs/architecture.md has the map of every module and
the data flow of one training step and one sampling call.
"""

_PUBLIC = {  # name: module; imported on first use, so `python -m nets.train` does not load them
    "load": "nets.pipeline", "Pipeline": "nets.pipeline", "DistilledStepsWarning": "nets.pipeline",
    "SamplerSettings": "nets.sampling.settings", "SampleOptions": "nets.sampling.settings",
    "Conditioning": "nets.sampling.settings", "InpaintSettings": "nets.editing.inpaint",
    "ScoreOptions": "nets.evaluation.scoring", "make_judge": "nets.evaluation.scoring",
    "named_mask": "nets.editing.masks",
    "fit": "nets.training.fit", "resume": "nets.training.fit", "TrainedRun": "nets.training.fit",
    "RunInterrupted": "nets.training.fit", "TrainConfig": "nets.training.config",
    "TrainingFailed": "nets.training.loop", "ConfigError": "nets.fields",
    "DistillConfig": "nets.distillation", "DistilledRun": "nets.distillation",
}
# ``nets.distill`` is the command's module, callable as the library's distill (nets/distill.py), so
# that ``nets.distill(config)`` and ``from nets import distill; distill.main(argv)`` both hold.
__all__ = sorted([*_PUBLIC, "distill"])


def __getattr__(name: str):
    if name == "distill":
        import importlib

        return importlib.import_module("nets.distill")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'nets' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
