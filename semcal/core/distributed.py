"""Several processes on one or more machines: the launcher's environment, one rank writes.

Launched by `torchrun --nproc_per_node=N` or `accelerate launch`, every process runs the same
stage; the launcher sets RANK, WORLD_SIZE and LOCAL_RANK. The stages share the work so:

- fine-tuning: the Trainer's DDP (it reads the same variables); the main process trains the
  scratch tokenizer while the others wait (`main_first`);
- scoring and captioning: the work is planned from all items, then each rank takes every
  WORLD_SIZE-th batch (`shard`), writes its own chunks, and the main process merges them into
  the file one process writes;
- everything else (distorting, evaluating, records, swapping outputs in): the main process,
  with the others waiting at a `barrier`; a stage that does not share its work is marked
  `@main_process_only`, so it runs once under a launcher from its script, the `semcal`
  command or Python alike.

With one process (no launcher) every function here is a no-op and the same code runs.
The process group uses NCCL when each process has a GPU, else gloo (CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
# True while the main process runs a stage on its own (main_process_only): inside, it acts as one process.
_alone: contextvars.ContextVar[bool] = contextvars.ContextVar("semcal_alone", default=False)
# A rank waits this long for the others (a long stage on the main process, e.g. distorting).
TIMEOUT = datetime.timedelta(hours=6)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """True when launched as one of several processes (and not inside a main-process-only stage)."""
    return world_size() > 1 and not _alone.get()


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Join the launcher's process group (once; the Trainer joins the same group)."""
    if not active():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)


def barrier() -> None:
    """Wait until every rank gets here."""
    if active():
        import torch.distributed as dist

        setup()
        dist.barrier()


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every rank (any picklable value; small ones)."""
    if not active():
        return value
    import torch.distributed as dist

    setup()
    holder = [value if is_main() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (small picklable values: counts, error lists)."""
    if not active():
        return [value]
    import torch.distributed as dist

    setup()
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def writer_name() -> str:
    """This rank's name for the chunks it writes into a shared parts folder (files.ChunkedTableWriter):
    none for the main process, so one process names its chunks as it always did."""
    return f"rank{rank()}-" if rank() else ""


def shard(batches: Sequence[Item]) -> list[Item]:
    """This rank's share: every WORLD_SIZE-th item, from its rank on. Deterministic, disjoint,
    and together the whole; with planned batches each text is computed in the same batch as
    in a one-process run, so merged outputs are byte-identical."""
    return list(batches[rank() :: world_size()])


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (training a tokenizer, writing a cache), then the
    others run it (and find the result)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def device() -> Any:
    """This process's device: its GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() if active() else torch.cuda.current_device())
    return torch.device("cpu")


def main_process_only(stage: Callable[..., Result]) -> Callable[..., Result | None]:
    """Run `stage` on the main process alone, as one process would; the other ranks wait for it
    and get None. For the stages that do not share their work (distort, evaluate, filter)."""

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Result | None:
        if not active():
            return stage(*args, **kwargs)
        result = None
        if is_main():
            token = _alone.set(True)
            try:
                result = stage(*args, **kwargs)
            finally:
                _alone.reset(token)
        barrier()  # a failure on the main process ends the launcher's other processes
        return result

    return run


def launch(nproc: int, arguments: Sequence[str]) -> int:
    """Run `torchrun --standalone --nproc_per_node=NPROC ARGUMENTS` from this process; its exit code."""
    import subprocess
    import sys

    # torchrun sets OMP_NUM_THREADS=1 with a warning banner when it is unset; share the cores instead.
    environment = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *arguments]
    return subprocess.run(command, env=environment, check=False).returncode
