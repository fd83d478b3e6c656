"""bench/real.py, the real-orchestrator mode of `make bench`, where CI can
run it: without the harness it says SKIPPED and why and exits 0 (CI has no
real orchestrator), and its chart is a real PNG drawn by gnuplot from the
figures it is given. A line of the table is computed from the runs of one
invocation, or (REPEAT) of several, each ratio then with its range."""
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


def runs(rate, elapsed, worker, orch, ok=True):
    """Three runs of one worker in one invocation, all alike."""
    return [(rate, elapsed, worker, orch, ok)] * 3


@test
def a_line_is_the_ratios_of_one_invocation(t):
    inv = {"baseline": runs(100.0, 10.0, 2.0, 3.0), "candidate": runs(120.0, 9.0, 0.6, 2.7)}
    check(real.line(1, "redis", [inv], 1000) ==
          "| 1 | Redis | 1.20x (120 vs 100) | 0.30x | 2.70 s vs 3.00 s (0.90x) | 30 % vs 30 % |",
          real.line(1, "redis", [inv], 1000))
    inv["candidate"] = inv["candidate"][:2] + [(120.0, 9.0, 0.6, 2.7, False)]
    check(real.line(1, "redis", [inv], 1000).endswith(" SOME RUNS FAILED"))


@test
def several_invocations_give_median_ratios_with_their_range(t):
    one = {"baseline": runs(100.0, 10.0, 2.0, 3.0), "candidate": runs(120.0, 9.0, 0.6, 2.7)}
    two = {"baseline": runs(200.0, 5.0, 2.0, 3.0), "candidate": runs(180.0, 6.0, 0.8, 3.3)}
    # Ratios 1.2 and 0.9 (jobs/s), 0.3 and 0.4 (worker CPU), 0.9 and 1.1
    # (orchestrator CPU); jobs/s, CPU and busy pooled over the six runs.
    want = ("| 16 | Memory | 1.05x [0.90-1.20] (150 vs 150) | 0.35x [0.30-0.40] | "
            "3.00 s vs 3.00 s (1.00x [0.90-1.10]) | 40 % vs 40 % |")
    got = real.line(16, "memory", [one, two], 1000)
    check(got == want, got)


if __name__ == "__main__":
    main()
