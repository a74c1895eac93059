"""Sampling: the reverse chain on the device (``chain``), N digits in seeded batches
(``batches``), and the files they are written to (``outputs``). The command is ``nets/sample.py``.
"""

from nets.sampling.batches import Generated, class_labels, generate, labels_from_frequencies
from nets.sampling.chain import DeviceCoefficients, NoiseFn, SampleResult, make_coefficients, sample

__all__ = ["DeviceCoefficients", "Generated", "NoiseFn", "SampleResult", "class_labels", "generate",
           "labels_from_frequencies", "make_coefficients", "sample"]
