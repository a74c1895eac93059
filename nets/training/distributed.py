"""Multi-process training with torch.distributed: the plumbing the training loop calls.

``torchrun --nproc_per_node=N -m nets.train ...`` starts N copies of the training script and sets
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each; :func:`setup` reads them and
joins the process group (NCCL on CUDA, gloo on CPU). Without them, or with WORLD_SIZE=1, it
returns a one-process :class:`World` and touches nothing of torch.distributed, so every method
below is then a no-op and ``python -m nets.train`` runs exactly as it always did.

Conventions (docs/distributed.md explains them for users):

* ``--batch-size`` is per rank: the global batch of one optimizer step is ``batch_size × size``.
  Every rank draws the whole global batch's data order, t, ε and label dropout from the shared
  seed and keeps its own rows (:meth:`World.shard`), so the union over ranks is the batch one
  process would draw, and N processes train like one process with the global batch.
* DistributedDataParallel averages the gradients; that all-reduce is the only per-step sync.
  Losses, stop requests and a weight checksum cross ranks only at log and checkpoint steps.
* Rank 0 alone writes files. Every rank holds bit-identical weights and EMA, which
  :meth:`World.check_replicas_agree` verifies before each checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


class ReplicaMismatchError(RuntimeError):
    """The ranks' weights differ: data parallelism is broken and checkpoints would be wrong."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; ``size == 1``: plain one-process training."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes files and makes figures."""
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """This rank's rows of a global batch: rank r keeps rows [r·B, (r+1)·B), B = global / size."""
        per_rank = global_batch // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DistributedDataParallel (gradients averaged over ranks); one process: itself."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of each entry (per-rank batch means → global-batch means)."""
        if self.size == 1:
            return values
        total = values.detach().clone()
        dist.all_reduce(total)  # SUM: gloo has no AVG
        return total / self.size

    def agree_to_stop(self, signum: int | None, timed_out: bool) -> tuple[int | None, bool]:
        """Every rank's stop requests combined, so that all ranks stop at the same step.

        A signal or the --max-minutes clock on any rank stops every rank; when ranks caught
        different signals the highest number wins (SIGTERM over SIGINT), the same on all.
        """
        if self.size == 1:
            return signum, timed_out
        flags = torch.tensor([int(signum or 0), int(bool(timed_out))], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        agreed_signal, agreed_timeout = flags.tolist()
        return (agreed_signal or None), bool(agreed_timeout)

    def agree_on_end(self, end: int) -> int:
        """The smallest of the ranks' projected last steps (the --max-minutes plan), the same on
        every rank; called by all ranks at the same step."""
        if self.size == 1:
            return end
        value = torch.tensor([end], dtype=torch.int64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return int(value.item())

    def check_replicas_agree(self, modules: dict[str, torch.nn.Module]) -> None:
        """Raise ReplicaMismatchError on every rank unless all ranks hold the same weights.

        Compares a float64 sum and sum of squares per tensor (parameters and buffers) through a
        MIN and a MAX all-reduce; DDP keeps replicas bit-identical, so any difference is a bug.
        """
        if self.size == 1:
            return
        names, sums = replica_checksums(modules, self.device)
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        differ = (low != high).reshape(-1, 2).any(dim=1).nonzero().flatten().tolist()
        if differ:
            shown = ", ".join(names[i] for i in differ[:3]) + (f" and {len(differ) - 3} more"
                                                              if len(differ) > 3 else "")
            raise ReplicaMismatchError(f"the {self.size} ranks hold different weights in {shown}")

    def meet(self) -> None:
        """Every rank waits here for the others (the end of a run: no rank ends, and so gets the
        job stopped, while another still trains). The group itself stays for the process's next
        run (a distillation's next round); :func:`run` leaves it when the command ends."""
        if self.size > 1 and dist.is_initialized():
            dist.barrier()

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the block on each machine's local rank 0 first (say, a download), then on the others."""
        if self.size > 1 and self.local_rank != 0:
            dist.barrier()
        yield
        if self.size > 1 and self.local_rank == 0:
            dist.barrier()


def replica_checksums(modules: dict[str, torch.nn.Module],
                      device: torch.device) -> tuple[list[str], torch.Tensor]:
    """Names and a (2K,) float64 tensor: (sum, sum of squares) of each floating tensor's entries.

    A NaN counts as 0 so that ranks that agree on a NaN compare equal (NaN != NaN).
    """
    names, sums = [], []
    for prefix, module in modules.items():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.nan_to_num(tensor.detach().double(), nan=0.0)
                names.append(f"{prefix}.{name}")
                sums += [values.sum(), values.square().sum()]
    return names, torch.stack(sums).to(device) if sums else torch.zeros(0, device=device)


_joined_a_group: list[bool] = []  # non-empty once this process has joined a multi-process group


def setup(device: torch.device, timeout_s: float) -> World:
    """Join torchrun's process group when WORLD_SIZE > 1; otherwise a one-process World.

    On CUDA each rank takes GPU LOCAL_RANK and NCCL; on CPU, gloo. ``timeout_s`` bounds how long
    a rank waits in a collective for the others before the job fails instead of hanging.
    Raises ValueError (naming the variable or flag) for a launch that cannot work.
    """
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"torchrun's WORLD_SIZE, RANK and LOCAL_RANK must be integers: {err}") from None
    if size <= 1:
        return World(device=device)
    if dist.is_available() and dist.is_initialized():  # joined already (a distillation's next round)
        device = torch.device("cuda", local_rank) if device.type == "cuda" else device
        return World(rank=rank, local_rank=local_rank, size=size, device=device)
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {device}: under torchrun each rank takes GPU LOCAL_RANK; "
                             f"pass --device cuda")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} on "
                             f"this machine; start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"--device {device}: torch.distributed trains on cuda (NCCL) or cpu (gloo) only")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _joined_a_group.append(True)  # run() ends this process with os._exit (see there)
    return World(rank=rank, local_rank=local_rank, size=size, device=device)


def per_rank_batch(batch_size: int, saved_world_size: object, world_size: int) -> int:
    """The per-rank batch that keeps a resumed run's global batch on ``world_size`` ranks.

    A run saved by ``saved_world_size`` ranks of ``batch_size`` images each has the global batch
    ``batch_size × saved_world_size``; the data position (step × global batch), the learning-rate
    schedule and the optimizer state then mean the same thing on any number of ranks.
    """
    if not isinstance(saved_world_size, int) or isinstance(saved_world_size, bool) or saved_world_size < 1:
        raise ValueError(f"the saved world_size {saved_world_size!r} is not a positive integer")
    global_batch = batch_size * saved_world_size
    if global_batch % world_size:
        raise ValueError(f"the run's global batch of {global_batch} ({saved_world_size} × {batch_size} "
                         f"per rank) does not split over {world_size} processes; resume it on a "
                         f"number of processes that divides {global_batch}")
    return global_batch // world_size


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A seed for rank ``rank``'s own torch RNG (dropout masks) from (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def run(main: Callable[[], int | None]) -> int | None:
    """``main()`` as the process's entry point: torchrun-aware on failure; leaves the process group.

    Under torchrun an exception is recorded for the launcher's failure summary (torchrun's
    ``record``), which names the rank that failed first; torchrun then stops the other ranks.
    The process group is destroyed on every way out, so no rank lingers in it.

    A process that was one of several ends with ``os._exit`` once ``main`` has returned: in
    torch 2.13, DistributedDataParallel keeps the gloo process group alive after
    ``destroy_process_group``, and when the interpreter shut down while a gloo worker thread was
    still releasing the tensors of the last collective, that thread needed the GIL and the
    process died with SIGABRT ("terminate called without an active exception"; a core dump
    showed ``~AsyncWork`` → ``take_gil`` during ``Py_FinalizeEx``), in about 1 two-process run
    in 30. Every file has been written and closed by then; the streams are flushed first.
    """
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        code = record(main)() if "TORCHELASTIC_RUN_ID" in os.environ else main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if _joined_a_group:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    return code
