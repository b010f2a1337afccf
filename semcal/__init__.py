"""semcal: semantic calibration of media streams.

Turn every item of a stream into text, score the text with a language model of the
stream ('general') and one of a trusted distribution ('real'), and filter the stream by
rejection sampling on their log-probability ratio.

    from semcal import Filter, FitConfig, fit_filter
    fit_filter(FitConfig(real="trusted.csv", general="stream_sample.csv", output="my_filter"))
    stream_filter = Filter.load("my_filter")
    stream_filter.accept_probs(["a dog barks"]), stream_filter.decide(["a dog barks"], seed=0)

Importing semcal changes nothing in the host process (environment, logging, warnings):
the `semcal` command and the stage scripts set up the console (semcal.core.console.setup); a
stage called from Python gives the `semcal` logger its own handler when it starts. The
names below load their modules on first use, so `import semcal` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public API: name -> (the module that defines it, its name there). `fit_filter` is
# semcal fit's function: `semcal.fit.fit` names the module once it is imported.
_EXPORTS = {
    "Filter": "semcal.filter.filtering",
    "FitConfig": "semcal.fit.fit",
    "fit_filter": ("semcal.fit.fit", "fit"),
    "FilterConfig": "semcal.stream.filter_stream",
    "filter_texts": "semcal.stream.filter_stream",
    "SOURCES": "semcal.filter.sources",
    "CALIBRATIONS": "semcal.filter.calibrations",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name] if isinstance(_EXPORTS[name], tuple) else (_EXPORTS[name], name)
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'semcal' has no attribute {name!r}")
