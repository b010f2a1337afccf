"""How many threads the numeric libraries (BLAS, OpenMP) may use: set by the command-line entry
points and stage scripts, never by `import semcal`.

On a shared machine, thread pools that spin while they wait fight each other and every other
process for the same cores: on a busy 2-core machine a labelled fit took 49 s against 6.5 s with
one BLAS thread, and `--adapt=prior` (thousands of small L-BFGS-B fits, BLAS calls on vectors of a
few numbers) ran 4-10x slower with two BLAS threads than with one. semcal's numpy / scipy BLAS work
is small (sparse products, low-dimensional optimisation), where a second thread never pays. So by
default the OpenBLAS (and BLIS) that numpy and scipy bring get 1 thread, and torch's own pools
(OpenMP, MKL) keep their defaults, so training and scoring compute as they always did.
`semcal --threads=N` (or the environment variable SEMCAL_THREADS=N) gives every pool N threads.
`available_cores` (CPU affinity, capped by a container's CPU quota) sizes a local Ray cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

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


def wanted(value: str | None = None) -> int | None:
    """The limit asked for (`--threads=N`, else SEMCAL_THREADS); None: the defaults (module doc)."""
    value = value if value is not None else os.environ.get(ENV)
    if value is None or value == "":
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:  # ValueError: the entry points turn it into their UserError (config imports this module)
        raise ValueError(f"threads={value!r} must be a whole number of threads, 1 or more (e.g. --threads=1).")
    return threads


def split_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the value of a `--threads=N` argument or None, the other arguments)."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--threads=")]
    return (values[-1] if values else None), [arg for arg in argv if not arg.startswith("--threads=")]


@contextlib.contextmanager
def limited(threads: int | None = None) -> Iterator[None]:
    """Run the block with numpy's and scipy's BLAS at 1 thread (threads None), or every BLAS and OpenMP
    pool at `threads`. The environment variables cover libraries loaded later (and child processes);
    threadpoolctl those already loaded."""
    names = ("OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS")
    if threads is not None:
        names += ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads or 1) for name in names})
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # scikit-learn brings it; without it the environment alone applies
        ThreadpoolController = None
    loaded = ThreadpoolController() if ThreadpoolController else None
    if loaded is not None and threads is None:
        loaded = loaded.select(internal_api=["openblas", "blis"])
    try:
        with loaded.limit(limits=threads or 1) if loaded is not None else contextlib.nullcontext():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
