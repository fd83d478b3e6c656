"""plot.py: what the charts of bench.py and real.py share: the frame of a
PNG of panels side by side, figures against task slots on a log2 axis, and
gnuplot found and run (without it there is no chart, and the log says why).
"""
import shutil
import subprocess


def frame(png, panels, title, xlabel, xs):
    """The gnuplot lines that open the PNG: `panels` side by side under
    `title`, the x axis log2 over the values xs."""
    return ['set terminal pngcairo size 1000,420 font ",10"', "set output '%s'" % png,
            'set multiplot layout 1,%d title "%s"' % (panels, title),
            "set logscale x 2", 'set xlabel "%s"' % xlabel, "set grid", "set key below",
            "set xtics (%s)" % ", ".join(str(x) for x in xs),
            "set xrange [%g:%g]" % (min(xs) / 1.5, max(xs) * 1.5)]


def draw(script, log):
    """Run gnuplot on the lines of script (the frame and its panels); False,
    with the reason given to log(), when there is no gnuplot or it fails."""
    gp = shutil.which("gnuplot")
    if gp is None:
        log("gnuplot not found (apt-get install -y gnuplot-nox): no chart")
        return False
    r = subprocess.run([gp], input="\n".join(script + ["unset multiplot"]) + "\n", text=True,
                       capture_output=True)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr[-500:])
        return False
    return True
