"""bench/real.py, the real-orchestrator mode of `make bench`, where CI can
run it: without the harness it says SKIPPED and why and exits 0 (CI has no
real orchestrator), and its chart is a real PNG drawn by gnuplot from the
figures it is given."""
import os
import subprocess
import sys

from avt import *  # noqa: F401,F403
from avt import ROOT, Skip, VALGRIND, check, main, test, tmo

sys.path.insert(0, os.path.join(ROOT, "bench"))
import real  # noqa: E402


@test
def without_the_harness_it_says_skipped_and_why(t):
    if VALGRIND:
        raise Skip("no daemon runs here")
    env = dict(os.environ, REAL_HARNESS=t.path("no-harness"))
    report = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(report, "rb") as f:
        before = f.read()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "real.py")], env=env,
                       capture_output=True, text=True, timeout=tmo(30))
    check(r.returncode == 0, r.returncode, r.stderr)
    check("SKIPPED" in r.stderr and "no harness at " + t.path("no-harness") in r.stderr, r.stderr)
    with open(report, "rb") as f:
        check(f.read() == before, "a skipped run rewrote docs/benchmarks.md")


@test
def the_chart_is_drawn_from_the_figures(t):
    if VALGRIND:
        raise Skip("no daemon runs here")
    png = t.path("chart.png")
    points = {"memory": [(1, 400.0, 300.0), (8, 560.0, 590.0)], "redis": [(1, 120.0, 100.0)]}
    if not real.chart(points, png):
        raise Skip("no gnuplot here")
    with open(png, "rb") as f:
        check(f.read(8) == b"\x89PNG\r\n\x1a\n", "not a PNG")
    # Another figure, another picture: the data is drawn, not a fixed image.
    png2 = t.path("chart2.png")
    check(real.chart({"memory": [(1, 50.0, 300.0), (8, 900.0, 90.0)], "redis": [(1, 120.0, 100.0)]}, png2))
    check(open(png, "rb").read() != open(png2, "rb").read(), "the figures did not change the chart")


if __name__ == "__main__":
    main()
