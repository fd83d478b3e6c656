#!/bin/sh
# deps.sh - make sure the Debian packages avtworkerd builds and tests with are
# installed. Run by `make` (once per build directory) and by .ci/run.
#
#   tools/deps.sh            check; install what is missing when root, else
#                            print the exact apt-get line and fail
#   tools/deps.sh --check    check only (exit 1 when something is missing)
#   DEPS_EXTRA="pkg ..."     more packages to require (e.g. valgrind; `make fuzz`
#                            asks for clang libclang-rt-14-dev)
#   DEPS_LOCK_WAIT=SECONDS   how long to wait for apt's and dpkg's locks when
#                            another apt (unattended-upgrades) holds them (900)
set -eu

# package:probe  (probe = a file that the package installs)
BUILD_PKGS="
libcurl4-openssl-dev:/usr/include/x86_64-linux-gnu/curl/curl.h
libjansson-dev:/usr/include/jansson.h
libev-dev:/usr/include/ev.h
libinih-dev:/usr/include/ini.h
libssl-dev:/usr/include/openssl/hmac.h
pkg-config:/usr/bin/pkg-config
gcc:/usr/bin/gcc
g++:/usr/bin/g++
make:/usr/bin/make
python3-aiohttp:/usr/lib/python3/dist-packages/aiohttp/__init__.py
openssl:/usr/bin/openssl
ca-certificates:/etc/ssl/certs/ca-certificates.crt
man-db:/usr/bin/man
groff-base:/usr/bin/groff
systemd:/usr/bin/systemd-analyze
"

missing=""
for entry in $BUILD_PKGS; do
    pkg=${entry%%:*}
    probe=${entry#*:}
    case "$probe" in
    /usr/include/x86_64-linux-gnu/*)
        # Multiarch headers: accept any architecture's directory.
        base=${probe#/usr/include/x86_64-linux-gnu/}
        ls /usr/include/*/"$base" >/dev/null 2>&1 || missing="$missing $pkg"
        ;;
    *) [ -e "$probe" ] || missing="$missing $pkg" ;;
    esac
done
for pkg in ${DEPS_EXTRA:-}; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done

[ -z "$missing" ] && exit 0
if [ "${1:-}" = "--check" ]; then
    echo "missing:$missing" >&2
    exit 1
fi

# On a fresh machine unattended-upgrades (apt-daily) holds the package
# manager's locks for minutes. apt-get waits for the dpkg lock when told
# (DPkg::Lock::Timeout) but not for the package lists' lock: retry while apt
# says a lock is held, for at most DEPS_LOCK_WAIT seconds (default 900).
lock_wait=${DEPS_LOCK_WAIT:-900}
deadline=$(($(date +%s) + lock_wait))
apt_get() { # apt-get arguments...
    out=$(mktemp)
    told=""
    while :; do
        left=$((deadline - $(date +%s)))
        [ "$left" -lt 1 ] && left=1
        rc=0
        apt-get -o DPkg::Lock::Timeout="$left" "$@" >"$out" 2>&1 || rc=$?
        if [ "$rc" -ne 0 ] && grep -qE '^E: (Could not get lock|Unable to lock)' "$out" &&
            [ "$(date +%s)" -lt "$deadline" ]; then
            if [ -z "$told" ]; then
                echo "deps: the package manager is busy (unattended-upgrades on a fresh machine?)," \
                    "waiting up to ${lock_wait} s:" "$(grep -m1 -E '^E: ' "$out")" >&2
                told=1
            fi
            sleep 3
            continue
        fi
        cat "$out" >&2
        rm -f "$out"
        [ "$rc" -eq 0 ] && [ -n "$told" ] && echo "deps: the package manager is free again" >&2
        return "$rc"
    done
}

if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -qq
    # shellcheck disable=SC2086
    apt_get install -y -qq --no-install-recommends $missing
    exit 0
fi
echo "avtworkerd needs these Debian packages; install them as root with:" >&2
echo "    apt-get install -y$missing" >&2
exit 1
