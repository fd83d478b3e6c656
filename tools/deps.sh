#!/bin/sh
# deps.sh - make sure the Debian packages avtworkerd builds and tests with are
# installed. Run by `make` (once per build directory) and by .ci/run.
#
#   tools/deps.sh            check; install what is missing when root, else
#                            print the exact apt-get line and fail
#   tools/deps.sh --check    check only (exit 1 when something is missing)
#   DEPS_EXTRA="pkg ..."     more packages to require (e.g. valgrind; `make fuzz`
#                            asks for clang libclang-rt-14-dev)
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
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >&2
    exit 0
fi
echo "avtworkerd needs these Debian packages; install them as root with:" >&2
echo "    apt-get install -y$missing" >&2
exit 1
