#!/bin/bash
# deb.sh OUTDIR - build the Debian packages (debian/) from a clean copy of
# this tree: the sources without build directories, VCS data or build
# products go to OUTDIR/src, `dpkg-buildpackage -us -uc -b` runs there (with
# no network when it can: unshare -n as root), and OUTDIR keeps the .deb,
# .buildinfo and .changes files; OUTDIR/src and the build log are removed
# unless the build fails. Used by `make deb` and tests/deb-test.sh.
set -euo pipefail
out=${1:?usage: tools/deb.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/src"
mkdir "$out/src"
tar -cf - --exclude-vcs --exclude='./build' --exclude='./build-*' --exclude=__pycache__ \
    --exclude='*.o' --exclude='*.so' --exclude='./fuzz/corpus-run' --exclude='./debian/.debhelper' \
    --exclude='./debian/tmp' --exclude='./debian/avtworkerd' --exclude='./debian/avtworkerd-dev' . |
    tar -C "$out/src" -xf -
isolate=()
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    isolate=(unshare -n)
    echo "deb: building in $out/src with dpkg-buildpackage -us -uc -b, no network"
else
    echo "deb: building in $out/src with dpkg-buildpackage -us -uc -b"
fi
if ! (cd "$out/src" && "${isolate[@]}" dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log"
    echo "deb: dpkg-buildpackage failed; its whole log: $out/build.log (sources in $out/src)" >&2
    exit 1
fi
rm -rf "$out/src" "$out/build.log"
ls "$out"/*.deb
