"""How many threads the numeric libraries (BLAS, OpenMP) may use: set by the command-line entry
points and stage scripts, never by `import semcal`.

On a shared machine, libraries that start one thread per core of the machine fight each other and
every other process for the same cores: a labelled fit took 49 s against 6.5 s with one BLAS
thread on a busy 2-core machine. `semcal --threads=N` (or the environment variable SEMCAL_THREADS)
sets the limit; the default is the cores this process may use (its CPU affinity, and a container's
CPU quota when there is one), so a machine that shows 64 cores to a 2-CPU container gets 2.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from semcal.config import UserError

ENV = "SEMCAL_THREADS"


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (v2 or v1) CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if limit != "max":
            return max(1, int(int(limit) // int(period)))
    with contextlib.suppress(OSError, ValueError):
        limit = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if limit > 0:
            return max(1, limit // period)
    return None


def wanted(value: str | None = None) -> int:
    """The limit asked for (`--threads=N`, else SEMCAL_THREADS), else the available cores."""
    value = value if value is not None else os.environ.get(ENV)
    if value is None or value == "":
        return available_cores()
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise UserError(f"threads={value!r} must be a whole number of threads, 1 or more (e.g. --threads=1).")
    return threads


def split_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the value of a `--threads=N` argument or None, the other arguments)."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--threads=")]
    return (values[-1] if values else None), [arg for arg in argv if not arg.startswith("--threads=")]


@contextlib.contextmanager
def limited(threads: int) -> Iterator[None]:
    """Run the block with BLAS and OpenMP pools of at most `threads` threads. The environment variables
    cover libraries loaded later (and child processes); threadpoolctl those already loaded."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it the environment alone applies
        threadpool_limits = None
    try:
        with threadpool_limits(limits=threads) if threadpool_limits else contextlib.nullcontext():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
