"""PyTorch side of the DDPM package: the U-Net, the training loop, sampling and evaluation.

All diffusion math comes from :mod:`diffusion_core` (float64 NumPy); this package only turns its
tables into tensors (:func:`nets.diffusion.extract`) and runs networks.
"""
