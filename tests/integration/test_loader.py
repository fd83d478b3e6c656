"""The plugin loader through the real binary: `avtworkerd --check-config -P DIR`
against a private plugin directory. Every refusal exits 78 (EX_CONFIG) with
a message on stderr naming the file; good plugins exit 0 and are listed.
Also: the SDK header compiles as C99 and as C++, and a plugin built with g++
loads."""
import os
import shutil
import subprocess

from avt import *  # noqa: F401,F403
from avt import ROOT, check, run_daemon, test, main

SDK = os.path.join(ROOT, "sdk")


def check_config(plugdir, ini=None):
    args = ["--check-config", "-P", plugdir]
    if ini is not None:
        args = ["-c", ini] + args
    return run_daemon(args)


def expect_refused(r, *needles):
    check(r.returncode == 78, "exit status %d, expected 78" % r.returncode, r.stdout, r.stderr)
    for n in needles:
        check(n in r.stderr, "stderr lacks: " + n, r.stderr)


def refused_alone(t, name, *needles):
    d = t.plugin_dir(name)
    expect_refused(check_config(d), os.path.join(d, name + ".so"), *needles)


# ---- Refusals by the descriptor ------------------------------------------------

@test
def no_symbol_refused(t):
    refused_alone(t, "bad_no_symbol", ": no 'avt_plugin' symbol: not an avtworkerd plugin "
                  "(define it with AVT_PLUGIN())")


@test
def abi_major_refused(t):
    refused_alone(t, "bad_abi_major", ": plugin ABI 2.0, this avtworkerd speaks 1.2: rebuild the "
                  "plugin against avtworkerd", "(avt_plugin.h ABI 1.2)")


@test
def newer_abi_minor_refused(t):
    refused_alone(t, "bad_abi_minor", ": plugin built against ABI 1.3, newer than this "
                  "avtworkerd's 1.2: rebuild the plugin against avtworkerd", "or upgrade avtworkerd")


@test
def small_struct_refused(t):
    refused_alone(t, "bad_small_struct", ": descriptor is 24 bytes, smaller than the 72 bytes of "
                  "ABI 1.0: corrupt or not built with AVT_PLUGIN()")


@test
def missing_handler_refused(t):
    refused_alone(t, "bad_no_handler", "has no handle() function")


@test
def bad_name_refused(t):
    refused_alone(t, "bad_bad_name", 'invalid plugin name "bad name!"')


@test
def missing_and_empty_types_refused(t):
    refused_alone(t, "bad_no_types", "declares no task types")
    shutil.rmtree(t.path("plugins"))
    refused_alone(t, "bad_bad_type", 'task type #2 "" is empty')


@test
def failing_init_refused(t):
    refused_alone(t, "bad_init_fail", ": init() failed: No such file or directory")


@test
def failing_start_refused(t):
    refused_alone(t, "bad_start_fail", ": start() failed: Address already in use")


@test
def not_an_elf_file_refused(t):
    d = t.plugin_dir()
    t.write("plugins/junk.so", "#!/bin/sh\necho I am not a shared object\n" * 4, mode=0o755)
    expect_refused(check_config(d), os.path.join(d, "junk.so") + ": cannot load: invalid ELF header")


@test
def empty_dir_refused(t):
    d = t.plugin_dir()
    t.write("plugins/README", "no plugins here\n")
    expect_refused(check_config(d), d + ": no plugins (*.so) found")
    expect_refused(check_config(t.path("missing")), t.path("missing"), "No such file or directory")


@test
def duplicate_type_names_both_plugins(t):
    d = t.plugin_dir("bad_dup_type_a", "bad_dup_type_b")
    a, b = os.path.join(d, "bad_dup_type_a.so"), os.path.join(d, "bad_dup_type_b.so")
    expect_refused(check_config(d), "task type 'dup_type' is claimed by both bad_dup_type_a (%s) "
                   "and bad_dup_type_b (%s): a task type can have one plugin only" % (a, b))


@test
def duplicate_name_names_both_files(t):
    d = t.plugin_dir("good_plain")
    shutil.copy(os.path.join(d, "good_plain.so"), os.path.join(d, "zz_copy.so"))
    expect_refused(check_config(d), "%s/zz_copy.so: plugin name 'good_plain' is already used by "
                   "plugin 'good_plain' (%s/good_plain.so)" % (d, d))


# ---- Refusals by permissions ---------------------------------------------------

WRITABLE = ": writable by others (mode %04o, owner uid %d"
REFUSING = "refusing to load code anyone can change; fix with "


@test
def world_writable_file_refused(t):
    d = t.plugin_dir("good_plain")
    f = os.path.join(d, "good_plain.so")
    os.chmod(f, 0o777)
    expect_refused(check_config(d), f + WRITABLE % (0o777, os.geteuid()) + "): " + REFUSING +
                   "chmod go-w " + f)


@test
def group_writable_by_other_group_refused(t):
    if os.geteuid() != 0:
        print("# skipped: needs root for chown")
        return
    d = t.plugin_dir("good_plain")
    f = os.path.join(d, "good_plain.so")
    os.chmod(f, 0o775)
    r = check_config(d)  # group-writable by our own group: fine
    check(r.returncode == 0, r.stderr)
    os.chown(f, 0, 1234)
    os.chmod(f, 0o775)
    expect_refused(check_config(d), f + WRITABLE % (0o775, 0) + ", group 1234): ", "chmod go-w " + f)


@test
def world_writable_dir_refused(t):
    d = t.plugin_dir("good_plain")
    os.chmod(d, 0o777)
    expect_refused(check_config(d), d + WRITABLE % (0o777, os.geteuid()), "chmod go-w " + d)


@test
def foreign_owner_refused(t):
    if os.geteuid() != 0:
        print("# skipped: needs root for chown")
        return
    d = t.plugin_dir("good_plain")
    f = os.path.join(d, "good_plain.so")
    os.chown(f, 1234, 0)
    os.chmod(f, 0o755)
    expect_refused(check_config(d), f + WRITABLE % (0o755, 1234) + "): ", "chown root: " + f)
    os.chown(f, 0, 0)
    os.chown(d, 1234, 1234)
    expect_refused(check_config(d), d + WRITABLE % (0o755, 1234))


@test
def symlink_to_writable_target_refused(t):
    d = t.plugin_dir()
    elsewhere = t.plugin_dir("good_plain", name="elsewhere")
    target = os.path.join(elsewhere, "good_plain.so")
    os.chmod(target, 0o666)
    link = os.path.join(d, "good_plain.so")
    os.symlink(target, link)
    expect_refused(check_config(d), "%s (target of %s)" % (target, link) + WRITABLE % (0o666, os.geteuid()))
    os.chmod(target, 0o755)
    r = check_config(d)
    check(r.returncode == 0, r.stderr)


# ---- Good plugins --------------------------------------------------------------

@test
def good_plugins_load_and_are_listed(t):
    d = t.plugin_dir("good_plain", "echo")
    t.write("plugins/README.txt", "ignored\n")
    r = check_config(d)
    check(r.returncode == 0, r.stdout, r.stderr)
    check("good_plain 0.1 (%s/good_plain.so): plain_b plain_a" % d in r.stdout, r.stdout)
    check("echo " in r.stdout, r.stdout)
    check("plugin good_plain 0.1 loaded from %s/good_plain.so" % d in r.stderr, r.stderr)


# ---- Plugin configuration from worker.ini ---------------------------------------

def config_run(t, body):
    d = t.plugin_dir("good_config", "good_plain")
    ini = t.ini(body)
    return d, ini, check_config(d, ini)


@test
def plugin_config_accepted(t):
    d, ini, r = config_run(t, "[plugin.good_config]\ngreeting = hello\ncount = 3\n")
    check(r.returncode == 0, r.stdout, r.stderr)
    check("good_config 1.2.3 (%s/good_config.so): good_config_type" % d in r.stdout, r.stdout)


@test
def plugin_config_unknown_key(t):
    d, ini, r = config_run(t, "[plugin.good_config]\ngreeting = hello\n\nbogus = 1\n")
    expect_refused(r, "%s:4: plugin.good_config.bogus: unknown key 'bogus' (good_config knows "
                   "greeting, count)" % ini)


@test
def plugin_config_bad_count(t):
    d, ini, r = config_run(t, "[plugin.good_config]\ncount = many\ngreeting = hello\n")
    expect_refused(r, '%s:2: plugin.good_config.count: count must be an integer, not "many"' % ini)


@test
def plugin_config_incomplete_fails_in_start(t):
    d, ini, r = config_run(t, "[plugin.good_config]\ncount = 2\n")
    expect_refused(r, "%s/good_config.so: start() failed: greeting is required" % d)


@test
def plugin_without_configure_takes_no_keys(t):
    d, ini, r = config_run(t, "[plugin.good_config]\ngreeting = hi\n[plugin.good_plain]\nspeed = 2\n")
    expect_refused(r, "%s:4: plugin.good_plain.speed: plugin good_plain takes no settings" % ini)


@test
def plugin_section_without_plugin(t):
    d, ini, r = config_run(t, "[plugin.good_config]\ngreeting = hi\n\n[plugin.nosuch]\nx = 1\n")
    expect_refused(r, ":5: plugin.nosuch: no plugin named nosuch in %s" % d)


# ---- The SDK header as plugin authors compile it ---------------------------------

TINY_C = r"""
#include <avt_plugin.h>

static int handle(void *state, struct avt_task *task)
{
    (void)state;
    avt_progress(task, 50.0, "half way");
    avt_log_info(task, "echo %d", 1);
    return avt_succeed(task, json_deep_copy(task->params));
}

static const char *const types[] = {"tiny_echo", NULL};
AVT_PLUGIN(.name = "tiny", .version = "1.0", .task_types = types, .handle = handle);
"""

# Portable C++ (any standard, -pedantic): positional initializers.
TINY_CXX = r"""
#include <avt_plugin.h>

static int handle(void *, struct avt_task *task)
{
    if (avt_is_cancelled(task))
        return avt_fail(task, AVT_TRANSIENT_ERROR, "cancelled %s", task->id);
    return avt_succeed(task, json_object());
}

static const char *const types[] = {"tiny_cxx_type", nullptr};
AVT_PLUGIN("tiny_cxx", "2.0", types, nullptr, nullptr, nullptr, handle, nullptr);
"""


def compile_ok(argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    check(r.returncode == 0, " ".join(argv), r.stdout, r.stderr)


@test
def sdk_header_compiles_as_c99(t):
    src = t.write("tiny.c", TINY_C)
    compile_ok(["cc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                "-I", SDK, src])


@test
def sdk_header_compiles_as_cxx(t):
    if shutil.which("g++") is None:
        check(False, "g++ is missing: apt-get install g++")
    src = t.write("tiny.c", TINY_C)
    # The documented designated-initializer form, with g++'s default dialect.
    compile_ok(["g++", "-x", "c++", "-fsyntax-only", "-Wall", "-I", SDK, src])
    # The documented form is standard C++20, warning-free.
    compile_ok(["g++", "-x", "c++", "-std=c++20", "-pedantic", "-Wall", "-Wextra", "-Werror",
                "-fsyntax-only", "-I", SDK, src])
    # The positional form works from C++14 on.
    cxx = t.write("tiny.cc", TINY_CXX)
    for std in ("c++14", "c++17", "c++20"):
        compile_ok(["g++", "-std=" + std, "-pedantic", "-Wall", "-Wextra", "-Werror",
                    "-fsyntax-only", "-I", SDK, cxx])


@test
def cxx_plugin_loads(t):
    if shutil.which("g++") is None:
        check(False, "g++ is missing: apt-get install g++")
    cxx = t.write("tiny.cc", TINY_CXX)
    d = t.plugin_dir()
    so = os.path.join(d, "tiny_cxx.so")
    compile_ok(["g++", "-shared", "-fPIC", "-fvisibility=hidden", "-I", SDK, cxx, "-o", so,
                "-Wl,-z,defs", "-ljansson"])
    os.chmod(so, 0o755)
    r = check_config(d)
    check(r.returncode == 0, r.stdout, r.stderr)
    check("tiny_cxx 2.0 (%s): tiny_cxx_type" % so in r.stdout, r.stdout)


main()
