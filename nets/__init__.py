"""PyTorch side of the DDPM package: the U-Net, training, sampling and evaluation.

All diffusion math comes from :mod:`diffusion_core` (float64 NumPy); this package only turns its
tables into tensors (:func:`nets.diffusion.extract`) and runs networks.

Commands (thin: flags → library → report): ``python -m nets.train``, ``nets.sample``,
``nets.evaluate``, ``nets.classifier``, with their shared flags in :mod:`nets.cli`. Library:
:mod:`nets.unet`, :mod:`nets.diffusion`, :mod:`nets.data`, :mod:`nets.checkpoint`,
:mod:`nets.device`, :mod:`nets.progress`, :mod:`nets.figures`, and the packages
:mod:`nets.training`, :mod:`nets.sampling`, :mod:`nets.evaluation`. docs/architecture.md has
the map and the data flow of one training step and one sampling call.
"""
