"""common.py: what bench.py, soak.py and real.py share: where the tree,
the build, the Python and the reference workers are, the fake
orchestrator's client (tests/integration/orch.py) on the import path, and
the one percentile every report uses."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
# The reference worker of each dialect, run from where it lives, never copied.
REF_DEFAULT = {"1.0b3": "/work/shared/orchestrator/ref_worker.py",
               "1.0b14": "/work/shared/orchestrator-head/ref_worker.py"}

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a list; None when empty."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]
