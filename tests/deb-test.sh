#!/bin/bash
# deb-test.sh - the Debian packages as an operator and a plugin author meet
# them, on this machine: built from a clean copy of the tree with
# dpkg-buildpackage (no network), checked by lintian (no error), installed
# with dpkg -i, the unit not enabled, worker.ini a conffile, the man pages
# and avtworker-sdk.pc where man and pkg-config look by default; the
# README's tutorial (its greet.c, its export, cc and run-once lines) run
# verbatim by an ordinary user (nobody) against the installed packages;
# --check-config and run-once from the installed paths; then purged, leaving
# nothing. Ends with "N passed, N failed" (.ci/run adds it up).
#
# Root only (dpkg -i): otherwise, or without debhelper and lintian, or when
# avtworkerd is already installed here (the test would purge it), it says
# why, counts nothing and exits 0. `make deb-test` runs it.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
NOBODY=65534
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { # what, details...
    failed=$((failed + 1))
    echo "not ok - $1"
    shift
    [ $# -gt 0 ] && printf '%s\n' "$@" | sed 's/^/#   /'
}
skip() {
    echo "# SKIP deb-test: $1"
    echo "0 passed, 0 failed"
    exit 0
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
as_nobody() { setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups "$@"; }

[ "$(id -u)" = 0 ] || skip "needs root (it installs the packages with dpkg -i, then purges them)"
for tool in dpkg-buildpackage dh lintian setpriv readelf python3; do
    command -v "$tool" >/dev/null ||
        skip "$tool is missing; as root: apt-get install -y debhelper dpkg-dev lintian binutils python3"
done
for pkg in avtworkerd avtworkerd-dev; do
    installed "$pkg" && skip "$pkg is installed on this machine: the test would purge it"
done

work=$(mktemp -d /tmp/avt-deb-test.XXXXXX)
chmod 0755 "$work"
cleanup() {
    for pkg in avtworkerd-dev avtworkerd; do
        installed "$pkg" && dpkg --purge "$pkg" >/dev/null 2>&1
    done
    rm -rf "$work"
}
trap cleanup EXIT

# 1. Build.
if out=$(tools/deb.sh "$work/out" 2>&1); then
    ok "dpkg-buildpackage -us -uc -b from a clean copy of the tree"
    while IFS= read -r line; do echo "# $line"; done <<<"$out"
else
    not_ok "dpkg-buildpackage -us -uc -b" "$out"
    echo "$passed passed, $failed failed"
    exit 1
fi
deb=$(ls "$work"/out/avtworkerd_*.deb)
devdeb=$(ls "$work"/out/avtworkerd-dev_*.deb)

# 2. lintian: no error; what else it says is shown.
lint=$(lintian --info --display-info "$work"/out/*.changes 2>&1 | grep -E '^[EWIP]: ')
echo "$lint" | grep -E '^[EWIP]: ' | sed 's/^/# lintian: /'
if echo "$lint" | grep -qE '^E: '; then
    not_ok "lintian reports errors" "$(echo "$lint" | grep -E '^E: ')"
else
    ok "lintian: no error ($(echo "$lint" | grep -cE '^W: ') warning(s))"
fi

# 3. Install.
if out=$(dpkg -i "$deb" "$devdeb" 2>&1); then
    ok "dpkg -i $(basename "$deb") $(basename "$devdeb")"
else
    not_ok "dpkg -i" "$out"
    echo "$passed passed, $failed failed"
    exit 1
fi

# 4. What an operator finds.
version=$(sed -n 's/^#define AVT_VERSION "\(.*\)"/\1/p' daemon/util.h)
problems=()
for f in /usr/sbin/avtworkerd /usr/lib/avtworkerd/exec.so /usr/lib/avtworkerd/http_fetch.so \
    /usr/lib/avtworkerd/echo.so /lib/systemd/system/avtworkerd.service \
    /usr/share/avtworkerd/exec.d/transcode.json /usr/include/avt_plugin.h; do
    [ -e "$f" ] || problems+=("missing: $f")
done
dpkg-query -W -f='${Conffiles}\n' avtworkerd | grep -q '^ /etc/avtworkerd/worker.ini ' ||
    problems+=("/etc/avtworkerd/worker.ini is not a conffile")
[ "$(stat -c %a /etc/avtworkerd/worker.ini)" = 644 ] ||
    problems+=("worker.ini is not readable by the unit's DynamicUser")
for w in /etc/systemd/system/*.wants/avtworkerd.service; do
    [ -e "$w" ] && problems+=("the unit is enabled on install: $w")
done
grep -q '^ExecStart=/usr/sbin/avtworkerd -c /etc/avtworkerd/worker.ini$' \
    /lib/systemd/system/avtworkerd.service || problems+=("the unit's ExecStart")
for page in avtworkerd.8 worker.ini.5 avtworkerd-http_fetch.7 avt_plugin.3; do
    man -w "${page%.*}" 2>/dev/null | grep -q "/man${page##*.}/${page}" || problems+=("man page $page")
done
[ "$(env -u PKG_CONFIG_PATH pkg-config --variable=plugindir avtworker-sdk 2>&1)" = /usr/lib/avtworkerd ] ||
    problems+=("avtworker-sdk.pc is not on pkg-config's default path")
[ "$(dpkg-query -W -f='${Version}' avtworkerd)" = "$version" ] ||
    problems+=("package version $(dpkg-query -W -f='${Version}' avtworkerd), daemon $version")
/usr/sbin/avtworkerd --version | grep -q "avtworkerd $version " || problems+=("avtworkerd --version")
if [ ${#problems[@]} -eq 0 ]; then
    ok "installed: files, conffile, unit not enabled, man pages, pkg-config, version $version"
else
    not_ok "installed files" "${problems[@]}"
fi

# 5. The README's tutorial, verbatim, by an ordinary user, against the packages.
home=$work/home
mkdir -p "$home/src"
python3 - "$ROOT/README.md" "$home/src/greet.c" "$work/tutorial.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
start = text.index("## Writing your first plugin")
section = text[start:text.index("\n## ", start + 1)]
open(sys.argv[2], "w").write(re.search(r"```c\n(/\* greet\.c .*?)```", section, re.S).group(1))
# The second shell block: export, mkdir, cc, run-once (the first installs
# from a checkout, which the packages stand for).
open(sys.argv[3], "w").write(re.findall(r"```sh\n(.*?)```", section, re.S)[1])
PY
chown -R $NOBODY:$NOBODY "$home"
out=$(cd "$home/src" && as_nobody env -i HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
    bash -euc "$(cat "$work/tutorial.sh")" 2>&1)
rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q '"greeting": *"Ada"' && echo "$out" | grep -q '"status": *"success"' &&
    [ ! -e "$home/.local" ] && readelf -d "$home/myplugins/greet.so" | grep -q 'NEEDED.*libjansson'; then
    ok "the README's tutorial as nobody against the installed avtworkerd-dev"
else
    not_ok "the README's tutorial against the packages (exit status $rc)" "$(cat "$work/tutorial.sh")" "$out"
fi

# 6. --check-config and run-once from the installed paths, as an ordinary
# user (the unit runs the daemon as a dynamic one).
out=$(as_nobody /usr/sbin/avtworkerd --check-config -c /etc/avtworkerd/worker.ini 2>&1)
rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q '^# plugins loaded from /usr/lib/avtworkerd:' &&
    echo "$out" | grep -q '^#   exec ' && echo "$out" | grep -q '^#   http_fetch ' &&
    echo "$out" | grep -q '^# configuration OK'; then
    ok "avtworkerd --check-config -c /etc/avtworkerd/worker.ini"
else
    not_ok "avtworkerd --check-config (exit status $rc)" "$out"
fi
out=$(as_nobody /usr/sbin/avtworkerd -c /etc/avtworkerd/worker.ini run-once echo '{"from": "the package"}' 2>&1)
rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q '"status": *"success"' && echo "$out" | grep -q '"from": *"the package"'; then
    ok "avtworkerd run-once echo from the installed plugin directory"
else
    not_ok "avtworkerd run-once (exit status $rc)" "$out"
fi

# 7. Purge: nothing left.
out=$(dpkg --purge avtworkerd-dev avtworkerd 2>&1)
rc=$?
left=()
for f in /usr/sbin/avtworkerd /usr/lib/avtworkerd /etc/avtworkerd /usr/share/avtworkerd \
    /usr/include/avt_plugin.h /usr/share/pkgconfig/avtworker-sdk.pc /lib/systemd/system/avtworkerd.service; do
    [ -e "$f" ] && left+=("left behind: $f")
done
if [ $rc -eq 0 ] && [ ${#left[@]} -eq 0 ] && ! installed avtworkerd && ! installed avtworkerd-dev; then
    ok "dpkg --purge leaves nothing"
else
    not_ok "dpkg --purge (exit status $rc)" "$out" "${left[@]}"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
