"""The configuration through the real binary: `avtworkerd --check-config -c
FILE -P DIR`. The shipped conf/worker.ini loads (also with every example
uncommented) and the effective configuration is printed with the token
masked; each kind of bad configuration exits 78 (EX_CONFIG) with
"file:line: key: what is wrong" on stderr; environment overrides show in
the dump; a missing or unreadable -c file is a clear error."""
import os
import re
import shutil

from avt import *  # noqa: F401,F403
from avt import ROOT, Skip, check, run_daemon, test, main

SHIPPED = os.path.join(ROOT, "conf", "worker.ini")
SECRET = "Xy7-integration-secret"


def check_config(t, ini, env=None, plugins=("echo",)):
    args = ["--check-config", "-P", t.plugin_dir(*plugins)]
    if ini is not None:
        args = ["-c", ini] + args
    return run_daemon(args, env=env)


def expect_ok(r):
    check(r.returncode == 0, "exit status %d, expected 0" % r.returncode, r.stdout, r.stderr)
    check("# configuration OK" in r.stdout, r.stdout)


def expect_refused(r, needle):
    check(r.returncode == 78, "exit status %d, expected 78" % r.returncode, r.stdout, r.stderr)
    check(needle in r.stderr, "stderr lacks: " + needle, r.stderr)


def dump_value(out, key, section=None):
    """The value of `key` in the dumped INI (first match in `section`)."""
    current = None
    for line in out.splitlines():
        m = re.match(r"^\[(.+)\]$", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^([^#;=\s][^=]*?)\s*=\s*(.*)$", line)
        if m and m.group(1) == key and (section is None or current == section):
            return m.group(2)
    return None


def uncomment_examples(text):
    """The shipped file with every ';key = value' example switched on, except
    token_file (token and token_file together are an error) and
    signing_key_file (its example path does not exist here)."""
    out = []
    for line in text.splitlines():
        if line.startswith(";") and not line.startswith((";token_file", ";signing_key_file")):
            line = line[1:]
        out.append(line)
    return "\n".join(out) + "\n"


@test
def shipped_config_loads_and_masks_token(t):
    r = check_config(t, SHIPPED, env={"WORKER_TOKEN": SECRET})
    expect_ok(r)
    for section in ("[worker]", "[orchestrator]", "[limits]", "[capabilities]"):
        check(section in r.stdout, "dump lacks " + section, r.stdout)
    check(dump_value(r.stdout, "token") == "********", r.stdout)
    check(SECRET not in r.stdout and SECRET not in r.stderr, "the token leaked", r.stdout, r.stderr)
    check(dump_value(r.stdout, "url") == "http://localhost:8080", r.stdout)
    check(dump_value(r.stdout, "max_concurrent_tasks") == "10", r.stdout)
    check("echo" in r.stdout, "echo plugin not listed", r.stdout)


@test
def shipped_examples_are_valid(t):
    """Every commented example value in conf/worker.ini is accepted."""
    with open(SHIPPED) as f:
        text = uncomment_examples(f.read())
    # [plugin.exec]: the shipped example type when ffmpeg is there (the
    # plugin checks that its program exists), else a stand-in.
    types = os.path.join(ROOT, "conf", "exec.d")
    if shutil.which("ffmpeg") is None:
        types = t.path("exec.d")
        t.write("exec.d/true.json", '{"argv": ["true"]}')
        os.chmod(types, 0o755)
    check("types_dir = /etc/avtworkerd/exec.d\n" in text, "the exec example changed")
    text = text.replace("types_dir = /etc/avtworkerd/exec.d\n", "types_dir = %s\n" % types)
    r = check_config(t, t.ini(text), plugins=("echo", "steps", "imaging", "http_fetch", "exec"))
    expect_ok(r)
    check(dump_value(r.stdout, "types_dir", "plugin.exec") == types, r.stdout)
    check(re.search(r"^#   exec 1\.0\.0 \(.*\): (transcode|true)$", r.stdout, re.M), r.stdout)
    check(dump_value(r.stdout, "allow_hosts", "plugin.http_fetch") is not None, r.stdout)
    check(dump_value(r.stdout, "transcribe", "limits") == "1", r.stdout)
    check(dump_value(r.stdout, "transcribe.timeout", "limits") == "600", r.stdout)
    check(dump_value(r.stdout, "max_steps", "plugin.steps") is not None, r.stdout)
    check(dump_value(r.stdout, "gpu_model") == "NVIDIA A100", r.stdout)
    check(dump_value(r.stdout, "token") == "********", r.stdout)


@test
def dump_is_loadable_again(t):
    r = check_config(t, t.ini("[worker]\nid = w1\nmax_concurrent_tasks = 3\n"
                              "[limits]\necho = 2\necho.timeout = 1.5\n"
                              "[capabilities]\nregion = eu\nfast = true\n"))
    expect_ok(r)
    r2 = check_config(t, t.ini(r.stdout, name="dumped.ini"))
    expect_ok(r2)
    strip = lambda s: [l for l in s.splitlines() if not l.startswith("#")]  # noqa: E731
    check(strip(r.stdout) == strip(r2.stdout), r.stdout, r2.stdout)


@test
def env_overrides_show_in_dump(t):
    ini = t.ini("[worker]\nid = from-file\nmax_concurrent_tasks = 3\n"
                "[orchestrator]\nurl = http://file.example:1\ntoken = file-token\n")
    r = check_config(t, ini, env={
        "ORCHESTRATOR_URL": "https://env.example:8443/",
        "MAX_CONCURRENT_TASKS": "42",
        "WORKER_INDIVIDUAL_TOKEN": SECRET,
        "WORKER_EXTRA_REGION": "us-east",
        "STATE_DIRECTORY": "/var/lib/one:/var/lib/two",
        "LOG_LEVEL": "debug",
        "WORKER_ID": "",  # empty counts as unset
    })
    expect_ok(r)
    check(dump_value(r.stdout, "url") == "https://env.example:8443", r.stdout)
    check(dump_value(r.stdout, "max_concurrent_tasks") == "42", r.stdout)
    check(dump_value(r.stdout, "id") == "from-file", r.stdout)
    check(dump_value(r.stdout, "region", "capabilities") == "us-east", r.stdout)
    check(dump_value(r.stdout, "state_dir") == "/var/lib/one", r.stdout)
    check(dump_value(r.stdout, "log_level") == "debug", r.stdout)
    check(dump_value(r.stdout, "token") == "********", r.stdout)
    check(SECRET not in r.stdout + r.stderr and "file-token" not in r.stdout + r.stderr,
          "a token leaked", r.stdout, r.stderr)


@test
def token_file_shown_as_path(t):
    tf = t.write("token", SECRET + "\n", mode=0o600)
    r = check_config(t, t.ini("[orchestrator]\ntoken_file = %s\n" % tf))
    expect_ok(r)
    check(dump_value(r.stdout, "token_file") == tf, r.stdout)
    check(dump_value(r.stdout, "token") == "********", r.stdout)
    check(SECRET not in r.stdout + r.stderr, "the token leaked", r.stdout, r.stderr)


@test
def bad_configs_exit_78_with_file_line_key(t):
    missing = t.path("no-such-token")
    empty = t.write("empty-token", "\n", mode=0o600)
    cases = [
        ("[worker]\nmax_concurrent_tasks = 0\n", "2: max_concurrent_tasks: 0 is out of range"),
        ("[worker]\n\nid = not ok!\n", "3: id: \"not ok!\" must match"),
        ("[worker]\nadvertise_busy = perhaps\n", "2: advertise_busy: not a boolean"),
        ("[worker]\nlog_level = chatty\n", "2: log_level: unknown log level"),
        ("[worker]\ninstalled_models = [{\"name\": \"m\"}]\n", "2: installed_models: element 0"),
        ("[worker]\ncost_per_skill = {\"a\": \"x\"}\n", "2: cost_per_skill: the cost of \"a\""),
        ("[orchestrator]\nurl = localhost:8080\n", "2: url: \"localhost:8080\" must start"),
        ("[orchestrator]\npoll_timeout = 0\n", "2: poll_timeout: 0 is out of range"),
        ("[orchestrator]\nheartbeat_interval = 1s\n", "2: heartbeat_interval: not a number"),
        ("[orchestrator]\ntoken = a\ntoken_file = /x\n", "3: token_file: token and token_file"),
        ("[orchestrator]\ntoken_file = %s\n" % missing,
         "2: token_file: cannot read %s: No such file or directory" % missing),
        ("[orchestrator]\ntoken_file = %s\n" % empty, "2: token_file: %s is empty" % empty),
        ("[limits]\necho = 5000\n", "2: limits.echo: 5000 is out of range"),
        ("[limits]\necho.timeout = -1\n", "2: limits.echo.timeout: "),
        ("[worker]\nid = a\nid = b\n", "3: id: duplicate key (first set on line 2)"),
        ("[worker]\nid = a\n[workers]\nx = 1\n", "4: [workers]: unknown section"),
        ("[worker]\nthreads = 4\n", "2: threads: unknown key in [worker]"),
        ("[worker]\nid = a\nnot a key line\n", "3: syntax error"),
        ("[worker]\nid = a\n  type = b\n", "3: id: indented line continues"),
        ("[worker]\n# " + "x" * 250 + "\n", "2: line too long"),
        ("[plugin.echo!]\nk = v\n", "2: plugin.echo!.k: the plugin name"),
        ("[plugin.steps]\nmax_steps = 5\n\nbogus = 1\n", "4: plugin.steps.bogus: unknown key"),
    ]
    for i, (text, want) in enumerate(cases):
        path = t.ini(text, name="bad%d.ini" % i)
        r = check_config(t, path, plugins=("echo", "steps"))
        expect_refused(r, "%s:%s" % (path, want))


@test
def env_errors_exit_78(t):
    cases = [
        ({"MAX_CONCURRENT_TASKS": "many"}, "environment: MAX_CONCURRENT_TASKS: not an integer"),
        ({"ORCHESTRATOR_URL": "ftp://x"}, "environment: ORCHESTRATOR_URL: "),
        ({"WORKER_ENABLE_WEBSOCKETS": "sometimes"}, "environment: WORKER_ENABLE_WEBSOCKETS: "),
        ({"INSTALLED_SOFTWARE": "[]"}, "environment: INSTALLED_SOFTWARE: must be a JSON object"),
        ({"WORKER_TOKEN_FILE": t.path("absent")},
         "environment: WORKER_TOKEN_FILE: cannot read %s: " % t.path("absent")),
    ]
    for env, want in cases:
        expect_refused(check_config(t, None, env=env), want)


@test
def missing_config_file_is_clear(t):
    path = t.path("nope.ini")
    r = check_config(t, path)
    expect_refused(r, "%s: cannot read: No such file or directory" % path)
    r = check_config(t, t.dir)
    expect_refused(r, "%s: cannot read: Is a directory" % t.dir)


@test
def no_config_file_runs_on_defaults(t):
    r = check_config(t, None, env={"WORKER_ID": "env-only"})
    expect_ok(r)
    check(dump_value(r.stdout, "id") == "env-only", r.stdout)
    check("# token = (not set)" in r.stdout, r.stdout)


@test
def no_token_at_all_is_warned_about(t):
    """A configuration with no credential loads (run-once needs none), but
    --check-config says the orchestrator would refuse the worker; with a
    token, or an orchestrator entry of its own with one, it says nothing."""
    r = check_config(t, SHIPPED)
    expect_ok(r)
    check("warning: no token for http://localhost:8080" in r.stderr, r.stderr)
    check("WORKER_TOKEN_FILE" in r.stderr, "the warning does not say what to set", r.stderr)
    check("# configuration OK, but with no token" in r.stdout, r.stdout)
    r = check_config(t, SHIPPED, env={"WORKER_TOKEN": SECRET})
    expect_ok(r)
    check("no token" not in r.stderr + r.stdout, r.stderr, r.stdout)
    own = t.ini("[orchestrator.a]\nurl = http://127.0.0.1:1\ntoken = %s\n" % SECRET, name="own.ini")
    r = check_config(t, own)
    expect_ok(r)
    check("no token" not in r.stderr + r.stdout, r.stderr, r.stdout)
    two = t.ini("[orchestrator.a]\nurl = http://127.0.0.1:1\ntoken = %s\n"
                "[orchestrator.b]\nurl = http://127.0.0.1:2\n" % SECRET, name="two.ini")
    r = check_config(t, two)
    expect_ok(r)
    check("warning: no token for http://127.0.0.1:2" in r.stderr, r.stderr)


@test
def missing_default_plugin_dir_hints_at_the_build_tree(t):
    """In a checkout, `--check-config -c conf/worker.ini` without -P finds
    no plugin directory at the compiled-in default: the error says to pass
    -P build/plugins. An explicit -P DIR that is missing gets no such hint."""
    r = run_daemon(["--check-config", "-c", SHIPPED], env={"WORKER_TOKEN": SECRET})
    if r.returncode == 0:
        raise Skip("the default plugin directory exists on this machine")
    m = re.search(r"^avtworkerd: (/\S+): cannot open plugin directory: No such file or directory",
                  r.stderr, re.M)
    check(m is not None, r.stderr)
    expect_refused(r, "cannot open plugin directory")
    check("pass -P build/plugins" in r.stderr, r.stderr)
    r = run_daemon(["--check-config", "-c", SHIPPED, "-P", t.path("nosuch")])
    expect_refused(r, "nosuch: cannot open plugin directory")
    check("-P build/plugins" not in r.stderr, r.stderr)


main()
