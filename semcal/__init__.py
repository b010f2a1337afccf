"""semcal: semantic calibration of media streams.

Turn every item of a stream into text, score the text with a language model of the
stream ('general') and one of a trusted distribution ('real'), and filter the stream by
rejection sampling on their log-probability ratio.
"""

__version__ = "0.1.0"

from semcal import console as _console  # noqa: E402

_console.setup()  # quiet libraries by default, also when a stage is called from Python
