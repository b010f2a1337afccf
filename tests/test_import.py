"""`import semcal` changes nothing in the host process, and exports the public API lazily."""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

PROBE = """
import json, logging, os, warnings
# The libraries semcal imports change warnings.filters on their own import: import them first.
import numpy, pandas, scipy.optimize, scipy.special, scipy.stats
before = (dict(os.environ), logging.getLogger().level, list(logging.getLogger().handlers), list(warnings.filters))
import semcal
import semcal.fit.fit, semcal.filter.filtering, semcal.stream.filter_stream  # the modules behind the public API
after = (dict(os.environ), logging.getLogger().level, list(logging.getLogger().handlers), list(warnings.filters))
print(json.dumps({"same": [b == a for b, a in zip(before, after)], "filter": semcal.Filter.__name__}))
"""


def test_importing_semcal_changes_nothing_in_the_host_process():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["same"] == [True, True, True, True], "environment, root level, root handlers, warnings filters"
    assert report["filter"] == "Filter"


def test_the_public_api_is_exported():
    import semcal
    from semcal.fit.fit import fit

    assert {"Filter", "FitConfig", "fit_filter", "FilterConfig", "filter_texts", "SOURCES", "CALIBRATIONS"} <= set(
        semcal.__all__
    )
    assert semcal.fit_filter is fit and "joint" in semcal.SOURCES
