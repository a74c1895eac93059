"""Throughput benchmarks: ``python -m benchmarks.train_speed`` and ``python -m benchmarks.sample_speed``.

Results and the commands that produced them: docs/benchmarks.md.

Run as ``python -m benchmarks.<script>``, the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the
environment sets it, before torch loads OpenMP: on a CPU shared with other processes, OpenMP's
default spin-waiting made every step of the U-Net 6-20x slower on two threads (measured in
docs/benchmarks.md, "Threads"). Set ``OMP_WAIT_POLICY`` yourself to choose otherwise; every
result records the policy it ran under. Importing the package (the tests do) changes nothing.
"""

import os
import sys

if sys.argv[:1] == ["-m"]:  # only while `python -m benchmarks.<script>` is starting up
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
