# avtworkerd - one non-recursive GNU Makefile (STYLE.md R16).
#
#   make                      build/avtworkerd, build/plugins/*.so, build/avtworker-sdk.pc
#   make test                 unit + integration tests; ends with "N passed, N failed"
#   make WERROR=1 all test-build bench-build fuzz-build   everything CI compiles, -Werror
#   make test SANITIZE=address,undefined    (or SANITIZE=thread): builds into build-<san>/
#   make test VALGRIND=1      integration tests under valgrind
#   make install PREFIX=/usr DESTDIR=/tmp/pkg
#   make demo                 local orchestrator + daemon + a few jobs of each kind
#   make deb                  Debian packages into build-deb/; make deb-test (root): build,
#                             lintian, dpkg -i, the tutorial, run-once, purge
#   make format | lint | clean | uninstall
#
# CFLAGS belongs to the user (default -O2 -g); the project's flags live in
# their own variables, so `make CFLAGS=-O0` keeps the warnings.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib
PLUGINDIR ?= $(LIBDIR)/avtworkerd
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
# /etc for the system prefixes, else under PREFIX: `make install
# PREFIX=$HOME/.local` as an ordinary user writes nothing outside it.
SYSCONFDIR ?= $(if $(filter /usr /usr/local,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share
PKG_CONFIG ?= pkg-config
PYTHON ?= /usr/bin/python3
EV_LIBS ?= -lev

CC ?= cc
CFLAGS ?= -O2 -g

comma := ,
ifeq ($(SANITIZE),)
BUILD ?= build
else
BUILD ?= build-$(subst $(comma),-,$(SANITIZE))
endif

WARN = -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wpointer-arith -Wcast-qual -Wwrite-strings -Wformat=2 -Wundef -Wvla
ifeq ($(WERROR),1)
WARN += -Werror
endif
HARDEN = -fstack-protector-strong -fPIE $(if $(findstring -O0,$(CFLAGS)),,-D_FORTIFY_SOURCE=2)
HARDEN_LD = -pie -Wl,-z,relro,-z,now
SAN = $(if $(SANITIZE),-fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all)

# Recursively expanded on purpose: evaluated when a recipe runs, i.e. after
# tools/deps.sh has installed the packages on a fresh machine.
PKG_CFLAGS = $(shell $(PKG_CONFIG) --cflags libcurl jansson inih libcrypto 2>/dev/null)
PKG_LIBS = $(shell $(PKG_CONFIG) --libs libcurl jansson inih libcrypto 2>/dev/null || echo -lcurl -ljansson -linih -lcrypto)

AVT_CFLAGS = -std=c17 -D_GNU_SOURCE $(WARN) $(HARDEN) $(SAN) -Isdk -Idaemon -MMD -MP \
             -DAVT_PLUGINDIR='"$(PLUGINDIR)"' $(PKG_CFLAGS)
LDLIBS_AVT = $(SAN) $(EV_LIBS) $(PKG_LIBS) -pthread -ldl
PLUGIN_CFLAGS = -std=c17 -D_GNU_SOURCE $(WARN) $(SAN) -Isdk -fPIC -fvisibility=hidden -MMD -MP
PLUGIN_LDFLAGS = -shared $(SAN) -Wl,-z,defs
PLUGIN_LIBS = -ljansson
# Libraries of one plugin beyond libjansson: PLUGIN_LIBS_<name>.
PLUGIN_LIBS_http_fetch = $(shell $(PKG_CONFIG) --libs libcurl 2>/dev/null || echo -lcurl)

# Daemon sources, one per line.
SRCS += daemon/util.c
SRCS += daemon/log.c
SRCS += daemon/exitguard.c
SRCS += daemon/cfg.c
SRCS += daemon/plugin.c
SRCS += daemon/skill.c
SRCS += daemon/task.c
SRCS += daemon/host.c
SRCS += daemon/evq.c
SRCS += daemon/pool.c
SRCS += daemon/runonce.c
SRCS += daemon/notify.c
SRCS += daemon/taskstats.c
SRCS += daemon/backoff.c
SRCS += daemon/rxon.c
SRCS += daemon/rxon_b3.c
SRCS += daemon/rxon_b14.c
SRCS += daemon/usage.c
SRCS += daemon/sts.c
SRCS += daemon/ledger.c
SRCS += daemon/outbox.c
SRCS += daemon/work.c
SRCS += daemon/orch.c
SRCS += daemon/daemon.c
SRCS += daemon/http.c
SRCS += daemon/bodycap.c
SRCS += daemon/ws.c
SRCS += daemon/spool.c
SRCS += daemon/spool_v1.c
SRCS += daemon/journal.c
SRCS += daemon/tls.c
SRCS += daemon/secfile.c
SRCS += daemon/orchset.c
SRCS += daemon/admin.c
SRCS += daemon/canon.c
SRCS += daemon/sign.c
MAIN_SRC = daemon/main.c

OBJS = $(SRCS:%.c=$(BUILD)/obj/%.o)
MAIN_OBJ = $(MAIN_SRC:%.c=$(BUILD)/obj/%.o)
LIBAVTD = $(BUILD)/libavtd.a

# Example plugins: every directory plugins/NAME/ becomes build/plugins/NAME.so.
PLUGIN_NAMES = $(notdir $(patsubst %/,%,$(wildcard plugins/*/)))
PLUGINS = $(PLUGIN_NAMES:%=$(BUILD)/plugins/%.so)

# Test plugins: tests/plugins/NAME.c becomes build/tests/plugins/NAME.so.
TEST_PLUGIN_SRCS = $(wildcard tests/plugins/*.c)
TEST_PLUGINS = $(TEST_PLUGIN_SRCS:tests/plugins/%.c=$(BUILD)/tests/plugins/%.so)

# Unit tests: tests/unit/test_NAME.c links the daemon objects (libavtd.a)
# and tests/mock_host.c.
UNIT_SRCS = $(wildcard tests/unit/test_*.c)
UNIT_BINS = $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/unit/%)

DEPS_STAMP = $(BUILD)/.deps-ok

.PHONY: all test check install uninstall clean format lint demo fuzz bench deps
all: $(BUILD)/avtworkerd $(PLUGINS) $(BUILD)/avtworker-sdk.pc

deps: $(DEPS_STAMP)
# NO_DEPS=1: the caller has installed the build dependencies (the Debian
# package's Build-Depends): no check, no apt-get.
$(DEPS_STAMP): tools/deps.sh
	@$(if $(filter 1,$(NO_DEPS)),:,tools/deps.sh)
	@mkdir -p $(@D) && touch $@

$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(AVT_CFLAGS) $(CFLAGS) -c $< -o $@

$(LIBAVTD): $(OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/avtworkerd: $(MAIN_OBJ) $(LIBAVTD)
	$(CC) $(CFLAGS) $(HARDEN_LD) $(LDFLAGS) -o $@ $^ $(LDLIBS_AVT)

.SECONDEXPANSION:
$(BUILD)/plugins/%.so: $$(wildcard plugins/%/*.c plugins/%/*.h) sdk/avt_plugin.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(CFLAGS) $(PLUGIN_LDFLAGS) $(LDFLAGS) -o $@ $(filter %.c,$^) \
	    $(PLUGIN_LIBS) $(PLUGIN_LIBS_$*)

$(BUILD)/tests/plugins/%.so: tests/plugins/%.c sdk/avt_plugin.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $< $(PLUGIN_LIBS)

$(BUILD)/obj/tests/mock_host.o: tests/mock_host.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(AVT_CFLAGS) -Itests $(CFLAGS) -c $< -o $@

# test_pool makes pthread_create() refuse a start, as the system does at its
# thread limit: the pool's calls go through the test's __wrap_pthread_create.
$(BUILD)/tests/unit/test_pool: LDFLAGS += -Wl,--wrap=pthread_create
$(BUILD)/tests/unit/%: tests/unit/%.c tests/tap.h $(LIBAVTD) $(BUILD)/obj/tests/mock_host.o
	@mkdir -p $(@D)
	$(CC) $(AVT_CFLAGS) -Itests -Iplugins $(CFLAGS) $(LDFLAGS) -o $@ $< \
	    $(BUILD)/obj/tests/mock_host.o $(LIBAVTD) $(LDLIBS_AVT)

# The installation paths are compiled in (AVT_PLUGINDIR) and written into the
# .pc file: remember them, so that `make install PREFIX=/usr` after a plain
# `make` rebuilds what depends on them instead of installing stale paths.
INSTALL_PATHS = $(PREFIX) $(PLUGINDIR) $(INCLUDEDIR)
$(BUILD)/.install-paths: FORCE
	@mkdir -p $(@D)
	@echo '$(INSTALL_PATHS)' | cmp -s - $@ || echo '$(INSTALL_PATHS)' > $@
$(BUILD)/obj/daemon/cfg.o: $(BUILD)/.install-paths
.PHONY: FORCE
FORCE:

$(BUILD)/avtworker-sdk.pc: sdk/avtworker-sdk.pc.in Makefile $(BUILD)/.install-paths
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@PLUGINDIR@|$(PLUGINDIR)|g' -e 's|@VERSION@|$(shell sed -n 's/^#define AVT_VERSION "\(.*\)"/\1/p' daemon/util.h)|g' \
	    $< > $@

# Everything the tests and the benchmarks compile, run nothing: CI's
# warning-free build is `make WERROR=1 all test-build bench-build fuzz-build`.
.PHONY: test-build bench-build
test-build: all $(TEST_PLUGINS) $(UNIT_BINS)
# bench-build is below, after BENCH_PLUGINS: a prerequisite list is expanded
# where the rule is read.

# ffmpeg is a test dependency only (the exec plugin's transcode tests):
# installed like the build packages when root, else those tests are skipped.
test check: test-build
	@DEPS_EXTRA=ffmpeg tools/deps.sh 2>/dev/null || \
	    echo "# ffmpeg is not installed: the exec plugin's ffmpeg tests are skipped"
	@BUILD=$(BUILD) SANITIZE=$(SANITIZE) VALGRIND=$(VALGRIND) PYTHON=$(PYTHON) tests/run.sh

demo: all
	@BUILD=$(BUILD) $(PYTHON) tests/demo.py

# Fuzzing (fuzz/README.md): libFuzzer targets fuzz/fuzz_NAME.c, built with
# clang and ASan+UBSan into build-fuzzer/ (daemon objects included).
# `make fuzz FUZZ_TIME=60` runs each for that many seconds; fuzz-smoke is
# CI's few-second run of each over its seed corpus.
FUZZ_BUILD ?= build-fuzzer
FUZZ_TIME ?= 30
FUZZ_SMOKE_TIME ?= 5
FUZZ_CC ?= clang
FUZZ_NAMES = $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
.PHONY: fuzz-build fuzz-smoke
fuzz-build:
	@DEPS_EXTRA="clang libclang-rt-14-dev" tools/deps.sh
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) \
	    SANITIZE=fuzzer-no-link,address,undefined $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz/%)
$(BUILD)/fuzz/%: fuzz/%.c $(LIBAVTD)
	@mkdir -p $(@D)
	$(CC) $(AVT_CFLAGS) $(CFLAGS) $(LDFLAGS) -fsanitize=fuzzer -o $@ $< $(LIBAVTD) $(LDLIBS_AVT)
fuzz: fuzz-build
	@tools/fuzz.sh $(FUZZ_BUILD) $(FUZZ_TIME)
fuzz-smoke: fuzz-build
	@tools/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SMOKE_TIME)

# Benchmarks (bench/README.md): bench/plugins/NAME.c becomes
# build/bench/plugins/NAME.so. `make bench RUNS=5` prints the table and
# rewrites docs/benchmarks.md (`PROTOCOL=1.0b14`: docs/benchmarks-1.0b14.md);
# bench-smoke is CI's few-second run of the same code in both dialects
# (numbers never judged).
BENCH_PLUGINS = $(patsubst bench/plugins/%.c,$(BUILD)/bench/plugins/%.so,$(wildcard bench/plugins/*.c))
bench-build: all $(BENCH_PLUGINS) $(BUILD)/bench/floor
RUNS ?= 3
REPEAT ?= 1
PROTOCOL ?= 1.0b3
$(BUILD)/bench/plugins/%.so: bench/plugins/%.c bench/plugins/stamp.h sdk/avt_plugin.h | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $< $(PLUGIN_LIBS)
$(BUILD)/bench/floor: bench/floor.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(AVT_CFLAGS) $(CFLAGS) $(HARDEN_LD) $(LDFLAGS) -o $@ $< $(LDLIBS_AVT)
.PHONY: bench-smoke bench-real soak
bench: bench-build
	@BUILD=$(BUILD) $(PYTHON) bench/bench.py --runs $(RUNS) --protocol $(PROTOCOL)
	@BUILD=$(BUILD) RUNS=$(RUNS) REPEAT=$(REPEAT) $(PYTHON) bench/real.py
# The real orchestrator (../shared/orchestrator, once its setup.sh ran):
# 1/8/16/64 slots on MemoryStorage and Redis; says SKIPPED when absent.
# REPEAT=3: three invocations per line, median ratios with their range.
bench-real: all
	@BUILD=$(BUILD) RUNS=$(RUNS) REPEAT=$(REPEAT) $(PYTHON) bench/real.py
bench-smoke: bench-build
	@BUILD=$(BUILD) $(PYTHON) bench/bench.py --smoke --protocol 1.0b3
	@BUILD=$(BUILD) $(PYTHON) bench/bench.py --smoke --protocol 1.0b14
	@BUILD=$(BUILD) $(PYTHON) bench/soak.py --smoke
# The kill -9 soak (bench/soak.py): SOAK_TASKS (100000) no-op tasks, a kill
# every SOAK_EVERY (3000); rewrites docs/benchmarks-soak.md. Fails if a job
# is lost.
soak: all $(BENCH_PLUGINS)
	@BUILD=$(BUILD) $(PYTHON) bench/soak.py

# Debian packages (debian/): `make deb` builds avtworkerd and avtworkerd-dev
# from a clean copy of the tree with dpkg-buildpackage into DEB_OUT;
# `make deb-test` (root only, else skipped) builds, lints, installs, uses and
# purges them on this machine (tests/deb-test.sh; CI runs it).
DEB_OUT ?= build-deb
.PHONY: deb deb-test
deb:
	@DEPS_EXTRA="debhelper dpkg-dev" tools/deps.sh
	@tools/deb.sh $(DEB_OUT)
deb-test:
	@if [ "$$(id -u)" = 0 ]; then DEPS_EXTRA="debhelper dpkg-dev lintian" tools/deps.sh; fi
	@tests/deb-test.sh

install: all
	install -Dm0755 $(BUILD)/avtworkerd $(DESTDIR)$(BINDIR)/avtworkerd
	install -d $(DESTDIR)$(PLUGINDIR)
	$(if $(PLUGINS),install -m0755 $(PLUGINS) $(DESTDIR)$(PLUGINDIR)/)
	install -Dm0644 sdk/avt_plugin.h $(DESTDIR)$(INCLUDEDIR)/avt_plugin.h
	install -Dm0644 $(BUILD)/avtworker-sdk.pc $(DESTDIR)$(PKGCONFIGDIR)/avtworker-sdk.pc
	install -Dm0644 conf/worker.ini $(DESTDIR)$(SYSCONFDIR)/avtworkerd/worker.ini.example
	@# A live configuration is never overwritten: worker.ini only when there is none.
	@# Mode 0644: the unit's DynamicUser must read it; the token goes in a token
	@# file (the unit's LoadCredential), never in worker.ini.
	test -e $(DESTDIR)$(SYSCONFDIR)/avtworkerd/worker.ini || \
	    install -m0644 conf/worker.ini $(DESTDIR)$(SYSCONFDIR)/avtworkerd/worker.ini
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/sbin/avtworkerd|$(BINDIR)/avtworkerd|g' \
	    -e 's|/usr/local/share/avtworkerd/|$(DATADIR)/avtworkerd/|g' \
	    -e 's|/etc/avtworkerd/|$(SYSCONFDIR)/avtworkerd/|g' systemd/avtworkerd.service \
	    > $(DESTDIR)$(UNITDIR)/avtworkerd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/avtworkerd.service
	@# The GPU drop-in is an example to copy into avtworkerd.service.d/, not active.
	install -Dm0644 systemd/gpu.conf $(DESTDIR)$(DATADIR)/avtworkerd/gpu.conf
	@# The exec plugin's drop-in and example type, to copy, not active.
	install -Dm0644 systemd/exec.conf $(DESTDIR)$(DATADIR)/avtworkerd/exec.conf
	install -Dm0644 conf/exec.d/transcode.json $(DESTDIR)$(DATADIR)/avtworkerd/exec.d/transcode.json
	@# Persistent types (avtworkerd-warm(7)): the reference child and a declaration running it.
	install -Dm0644 plugins/exec/examples/warm_child.py $(DESTDIR)$(DATADIR)/avtworkerd/examples/warm_child.py
	sed -e 's|/usr/local/share/avtworkerd/|$(DATADIR)/avtworkerd/|g' plugins/exec/examples/inference.json \
	    > $(DESTDIR)$(DATADIR)/avtworkerd/exec.d/inference.json
	chmod 0644 $(DESTDIR)$(DATADIR)/avtworkerd/exec.d/inference.json
	install -Dm0644 man/avtworkerd.8 $(DESTDIR)$(MANDIR)/man8/avtworkerd.8
	install -Dm0644 man/worker.ini.5 $(DESTDIR)$(MANDIR)/man5/worker.ini.5
	install -Dm0644 man/avt_plugin.3 $(DESTDIR)$(MANDIR)/man3/avt_plugin.3
	install -Dm0644 man/avtworkerd-http_fetch.7 $(DESTDIR)$(MANDIR)/man7/avtworkerd-http_fetch.7
	install -Dm0644 man/avtworkerd-warm.7 $(DESTDIR)$(MANDIR)/man7/avtworkerd-warm.7

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/avtworkerd $(DESTDIR)$(INCLUDEDIR)/avt_plugin.h
	rm -f $(DESTDIR)$(PKGCONFIGDIR)/avtworker-sdk.pc
	rm -f $(PLUGIN_NAMES:%=$(DESTDIR)$(PLUGINDIR)/%.so)
	-rmdir $(DESTDIR)$(PLUGINDIR)
	@# worker.ini goes only when it is still the shipped file (never edits).
	cmp -s conf/worker.ini $(DESTDIR)$(SYSCONFDIR)/avtworkerd/worker.ini && \
	    rm -f $(DESTDIR)$(SYSCONFDIR)/avtworkerd/worker.ini || true
	rm -f $(DESTDIR)$(SYSCONFDIR)/avtworkerd/worker.ini.example
	-rmdir $(DESTDIR)$(SYSCONFDIR)/avtworkerd 2>/dev/null
	rm -f $(DESTDIR)$(UNITDIR)/avtworkerd.service
	rm -f $(DESTDIR)$(DATADIR)/avtworkerd/gpu.conf $(DESTDIR)$(DATADIR)/avtworkerd/exec.conf
	rm -f $(DESTDIR)$(DATADIR)/avtworkerd/exec.d/transcode.json
	rm -f $(DESTDIR)$(DATADIR)/avtworkerd/exec.d/inference.json
	rm -f $(DESTDIR)$(DATADIR)/avtworkerd/examples/warm_child.py
	-rmdir $(DESTDIR)$(DATADIR)/avtworkerd/examples 2>/dev/null
	-rmdir $(DESTDIR)$(DATADIR)/avtworkerd/exec.d 2>/dev/null
	-rmdir $(DESTDIR)$(DATADIR)/avtworkerd 2>/dev/null
	rm -f $(DESTDIR)$(MANDIR)/man8/avtworkerd.8 $(DESTDIR)$(MANDIR)/man5/worker.ini.5
	rm -f $(DESTDIR)$(MANDIR)/man3/avt_plugin.3
	rm -f $(DESTDIR)$(MANDIR)/man7/avtworkerd-http_fetch.7
	rm -f $(DESTDIR)$(MANDIR)/man7/avtworkerd-warm.7

FORMAT_FILES = $(wildcard daemon/*.[ch] sdk/*.h plugins/*/*.c tests/*.[ch] tests/unit/*.c tests/plugins/*.c)
CLANG_FORMAT ?= clang-format
format:
	$(CLANG_FORMAT) -i $(FORMAT_FILES)

lint:
	$(CLANG_FORMAT) --dry-run -Werror $(FORMAT_FILES)
	@! grep -nE '(^|[^a-z_])(sprintf|strcpy|strcat|strtok|gets|atoi) *\(' $(FORMAT_FILES) \
	    || { echo "lint: banned function used (see above)"; exit 1; }
	@echo "lint: OK"

clean:
	rm -rf build build-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
