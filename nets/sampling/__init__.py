"""Sampling: the bundles a sampling call takes (``settings``), the reverse chain on the device
(``chain``), N digits in seeded batches (``batches``), autoguidance (``guidance``) and the files
they are written to (``outputs``). The command is ``nets/sample.py``; the short way in from
Python is :func:`nets.load`.
"""

from nets.sampling.batches import Generated, generate
from nets.sampling.chain import NoiseFn, SampleResult, sample, step_function
from nets.sampling.settings import (
    MULTISTEP,
    SAMPLERS,
    SPACINGS,
    ChainOptions,
    Conditioning,
    DeviceCoefficients,
    Network,
    SampleOptions,
    SamplerSettings,
    class_labels,
    labels_from_frequencies,
    make_coefficients,
    min_steps,
)

__all__ = ["MULTISTEP", "SAMPLERS", "SPACINGS", "ChainOptions", "Conditioning", "DeviceCoefficients",
           "Generated", "Network", "NoiseFn", "SampleOptions", "SampleResult", "SamplerSettings",
           "class_labels", "generate", "labels_from_frequencies", "make_coefficients", "min_steps",
           "sample", "step_function"]
