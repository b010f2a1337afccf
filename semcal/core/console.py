"""What a person sees: Python logging, one progress bar per stage, library chatter off.

Every module logs through `logging.getLogger(__name__)`; `setup` (called by the `semcal`
command and the stage scripts) sends the `semcal` loggers to standard output as plain lines,
prefixed by `stage_prefix` (the pipeline's "[3/20] "), warnings as "warning: ...". The
libraries' own logging, progress bars and known-harmless warnings stay off unless
`verbose`. Under a launcher only the main process prints lines and bars; the other ranks,
which would repeat its warnings, print only errors.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from semcal.core import distributed

_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("semcal_prefix", default="")
_verbose = False

# Python warnings of the libraries that are harmless here and alarm users. (transformers'
# loss_type and tied-weights messages come through logging and are handled where they arise.)
_HARMLESS_WARNINGS = (r".*`resume_download` is deprecated.*",)


class _Handler(logging.Handler):
    """Writes to the sys.stdout of the moment (pytest and notebooks replace it after import)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # a closed stream must not turn a log line into a crash
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        return _prefix.get() + message


def setup(verbose: bool = False) -> None:
    """Console logging for the `semcal` loggers; libraries quiet unless `verbose`."""
    global _verbose
    _verbose = verbose
    install_handler()
    level = logging.DEBUG if verbose else logging.INFO
    logging.getLogger("semcal").setLevel(level if distributed.is_main() else logging.ERROR)
    quiet_libraries(not verbose)


def install_handler() -> None:
    """The package logger's own console handler, as transformers and datasets have theirs: a
    stage called from Python or a notebook shows its lines without any set-up."""
    logger = logging.getLogger("semcal")
    if not any(isinstance(handler, _Handler) for handler in logger.handlers):
        handler = _Handler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = False


def quiet_libraries(quiet: bool = True) -> None:
    """Turn the libraries' logging, progress bars and harmless warnings off (or back on).

    Environment switches cover libraries imported later; those already imported are switched
    through their own calls. Safe to call again after a heavy import.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    switches = {
        "TRANSFORMERS_VERBOSITY": "error" if quiet else "info",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1" if quiet else "",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1" if quiet else "",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1" if quiet else "",
    }
    os.environ.update(switches)
    level = logging.ERROR if quiet else logging.INFO
    for name in ("transformers", "datasets", "huggingface_hub", "accelerate", "torch", "matplotlib"):
        logging.getLogger(name).setLevel(level)
    if quiet:
        for pattern in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
    _library_verbosity(quiet)


def _library_verbosity(quiet: bool) -> None:
    """transformers and datasets keep their own verbosity and progress-bar switches once imported."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error() if quiet else transformers_logging.set_verbosity_info()
        transformers_logging.disable_progress_bar() if quiet else transformers_logging.enable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars() if quiet else datasets.enable_progress_bars()
        datasets.logging.set_verbosity_error() if quiet else datasets.logging.set_verbosity_info()


def is_verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def stage_prefix(text: str) -> Iterator[None]:
    """Prefix every line (and progress bar) logged inside the block, e.g. "[3/20] "."""
    token = _prefix.set(text)
    try:
        yield
    finally:
        _prefix.reset(token)


def progress(iterable: Iterable[Any] | None = None, desc: str = "", **kwargs: Any) -> Any:
    """A tqdm bar with rate and ETA that disappears when done, leaving the stage's own summary line."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", _verbose)
    kwargs.setdefault("disable", not distributed.is_main())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, desc=_prefix.get() + desc, **kwargs)
