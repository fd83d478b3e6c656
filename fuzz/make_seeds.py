#!/usr/bin/python3
"""Write the seed corpora fuzz/corpus/<target>/seed-* from real protocol
examples (PROTOCOL.md 2.1-2.6, 5), the shipped configuration and hand-made
WebSocket streams. Re-run after changing it; crash reproducers found by the
fuzzers live next to the seeds as regress-* and are never rewritten here."""
import hashlib
import base64
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ID = "8f27c419-d9e5-4510-b4e6-56ec53ba8ba2"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def task_seeds():
    t = "fuzz_task_parse"
    write(t, "poll", '{"job_id": "%s", "task_id": "%s", "type": "echo", "params": {"msg": "hi"}, '
          '"tracing_context": {}, "params_metadata": null}' % (ID, ID))
    write(t, "branch", '{"job_id": "j1", "task_id": "b-1", "type": "imaging.resize", '
          '"params": {"width": 64, "height": 32, "image": "aGVsbG8="}, "tracing_context": '
          '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, '
          '"params_metadata": {"image": {"uri": "s3://b/k", "size": 5, "etag": "e"}}, "priority": 9}')
    write(t, "no_params", '{"job_id": "j", "task_id": "t", "type": "echo"}')
    write(t, "bad_params", '{"job_id": "j", "task_id": "t", "type": "echo", "params": [1, 2]}')
    write(t, "no_ids", '{"type": "echo", "params": {}}')
    write(t, "dup", '{"job_id": "j", "job_id": "k", "task_id": "t", "type": "x", "params": {}}')
    write(t, "deep", '{"job_id": "j", "task_id": "t", "type": "x", "params": ' + "[" * 200 + "]" * 200 + "}")
    write(t, "unicode", '{"job_id": "j\\u00e9", "task_id": "t\\ud83d\\ude00", "type": "echo", '
          '"params": {"s": "\\u0000x"}}')
    write(t, "not_object", '["job_id"]')
    write(t, "empty", "")


def cfg_seeds():
    t = "fuzz_cfg"
    with open(os.path.join(ROOT, "conf", "worker.ini")) as f:
        write(t, "worker_ini", f.read())
    write(t, "full", """[worker]
id = w-1
type = gpu-worker
max_concurrent_tasks = 4
cpu_cores = 8
shutdown_timeout = 12.5
advertise_busy = false
log_level = debug
log_format = json
hostname = host1
ip_address = 10.0.0.2
gpu_model = RTX 4090
gpu_vram_gb = 24
installed_software = {"python": "3.11", "ffmpeg": "6"}
installed_models = [{"name": "llama", "version": "3"}]
cost_per_skill = {"echo": 0.5}

[orchestrator]
url = https://orch.example:8443/base
token = secret-token
poll_timeout = 30
heartbeat_interval = 15
heartbeat_debounce = 0.1
websockets = yes
result_retry_initial_delay = 1
retry_max_delay = 60
probe_every = 4

[limits]
echo = 2
imaging.resize = 1
imaging.resize.timeout = 30

[capabilities]
region = eu
gpu = true

[plugin.echo]
prefix = >>
api_key = hunter2
""")
    write(t, "bad_key", "[worker]\nnot_a_key = 1\n")
    write(t, "bad_section", "[nope]\nx = 1\n")
    write(t, "syntax", "[worker\nmax_concurrent_tasks 4\n")
    write(t, "continuation", "[capabilities]\nlong = a\n  b\n  c\n")
    write(t, "dup", "[worker]\nid = a\nid = b\n")
    write(t, "token_file_missing", "[orchestrator]\ntoken_file = /nonexistent/avt-token\n")
    write(t, "bad_numbers", "[worker]\nmax_concurrent_tasks = 99999999999999999999\n"
          "shutdown_timeout = nan\n[orchestrator]\npoll_timeout = -1\n")
    write(t, "bad_json", "[worker]\ninstalled_models = [{\"name\": 1}]\ncost_per_skill = {\"a\": \"x\"}\n")
    write(t, "bad_url", "[orchestrator]\nurl = ftp://x/\n")
    write(t, "ctrl", "[worker]\ntype = a\x01b\n")
    write(t, "crlf", "[worker]\r\nid = w\r\n")
    write(t, "empty", "")


def write_dict(target, words):
    """fuzz/<target>.dict: tokens libFuzzer splices into inputs, escaped as
    its dictionary format wants (backslash, quote, \\xNN)."""
    def esc(w):
        out = []
        for b in w.encode("latin-1"):
            c = chr(b)
            out.append("\\" + c if c in '"\\' else c if 32 <= b < 127 else "\\x%02x" % b)
        return "".join(out)
    with open(os.path.join(HERE, target + ".dict"), "w") as f:
        f.write("# Written by make_seeds.py.\n")
        for w in sorted(set(words)):
            f.write('"%s"\n' % esc(w))


def cfg_dict():
    import re
    with open(os.path.join(ROOT, "daemon", "cfg.c")) as f:
        src = f.read()
    words = ["[worker]", "[orchestrator]", "[limits]", "[capabilities]", "[plugin.echo]",
             " = ", "\n", ".timeout", "true", "false", "yes", "no", "on", "off", "debug",
             "json", "plain", "journal", "http://", "https://", "127.0.0.1:8080", "{}", "[]",
             '{"name": "m", "version": "1"}', "1e309", "-1", "0x10", "nan", "inf", ";", "#"]
    for sec, key in re.findall(r'\{"([a-z_]+)", "([a-z_]+)"', src):
        words += ["[%s]" % sec, key, key + " = "]
    words += re.findall(r'"([A-Z][A-Z0-9_]+_)"', src)
    write_dict("fuzz_cfg", words)


def json_dict(target, keys):
    words = ['"%s"' % k for k in keys] + ['"%s":' % k for k in keys]
    words += ["{", "}", "[", "]", ":", ",", "null", "true", "false", "0", "-1", "1e400",
              '"\\u0000"', '"\\ud800"', '""']
    write_dict(target, words)


def frame(op, payload, fin=True, mask=None, form=None):
    b0 = (0x80 if fin else 0) | op
    n = len(payload)
    if form == 127 or n > 0xFFFF:
        hdr = struct.pack("!BBQ", b0, 127 | (0x80 if mask else 0), n)
    elif form == 126 or n >= 126:
        hdr = struct.pack("!BBH", b0, 126 | (0x80 if mask else 0), n)
    else:
        hdr = struct.pack("!BB", b0, n | (0x80 if mask else 0))
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        hdr += mask
    return hdr + payload


def ws_seeds():
    t = "fuzz_ws_frame"
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n" % acc).encode()
    cancel = ('{"command": "cancel_task", "task_id": "%s", "job_id": "%s"}' % (ID, ID)).encode()
    write(t, "handshake", head)
    write(t, "handshake_cancel", head + frame(1, cancel))
    write(t, "handshake_401", head + b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    write(t, "handshake_403", b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno")
    write(t, "handshake_badaccept", head.replace(acc.encode(), b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    write(t, "handshake_tokens", ("HTTP/1.1 101 OK\r\nupgrade:  WebSocket , h2c\r\nCONNECTION: keep-alive, Upgrade\r\n"
                                  "sec-websocket-accept: %s \r\n\r\n" % acc).encode() + frame(9, b"p"))
    write(t, "frames", frame(1, cancel) + frame(9, b"ping") + frame(10, b"") + frame(2, b"\x00\x01"))
    write(t, "fragmented", frame(1, b'{"command": ', fin=False) + frame(9, b"x") +
          frame(0, b'"cancel_task", ', fin=False) + frame(0, b'"task_id": "t"}'))
    write(t, "close", frame(1, b"hi") + frame(8, struct.pack("!H", 1000) + b"bye"))
    write(t, "close_bad", frame(8, struct.pack("!H", 1005)) + frame(8, b"x"))
    write(t, "long16", frame(1, b"a" * 300))
    write(t, "long64", frame(1, b"b" * 40, form=127))
    write(t, "masked", frame(1, b"masked text", mask=b"\x01\x02\x03\x04"))
    write(t, "partial", frame(1, b"c" * 200)[:100])
    write(t, "cont_first", frame(0, b"orphan"))
    write(t, "reserved", bytes([0xC1, 0x00]) + bytes([0x83, 0x00]))


def orch_seeds():
    t = "fuzz_rxon"
    for i, body in enumerate([
        '{"status": "registered", "version": "1.0b3", "warning": null}',
        '{"status": "registered", "version": "1.0b3", "warning": "Protocol version mismatch! '
        'Orchestrator: 1.0b3, Worker: 0.9."}',
        '{"error": "Missing required field: worker_id"}',
        '{"error": "Invalid worker_id: \'bad id!\'. Must be alphanumeric, underscores, or hyphens only."}',
        '{"status": "ttl_refreshed"}',
        "null",
        '{"status": "ok"}',
        '{"status": "ok", "cancel_task_ids": ["%s", "b-2", 7, null]}' % ID,
        '{"status": "ok", "cancel_task_ids": "not-a-list"}',
        '{"error": "Expecting value: line 1 column 1 (char 0)"}',
        '{"status": "accepted", "transition": "success_transition"}',
        '{"status": "accepted", "transition": "failure_handled"}',
        '{"status": "ignored", "reason": "job_not_found", "message": "Job X not found (expired or deleted)."}',
        '{"status": "ignored", "reason": "stale_task", "message": "Result ignored: task_id X is no '
        'longer active for job Y."}',
        '{"status": "ignored"}',
        '{"error": "Too Many Requests"}',
        '{"command": "cancel_task", "task_id": "%s", "job_id": "%s"}' % (ID, ID),
        '{"command": "cancel_task", "task_id": 5}',
        '{"command": "shutdown"}',
        "<html><body>502 Bad Gateway\r\n\tnginx</body></html>",
        "500 Internal Server Error" + "x" * 200,
        '{"status": "ok", "cancel',
        "",
    ]):
        write(t, "%02d" % i, body)


def state_seeds():
    """fuzz_state: first byte 0 = a spool file, 1 = running.log, 2 = crashes."""
    t = "fuzz_state"
    url = "http://127.0.0.1:8080"
    body = ('{"job_id":"%s","task_id":"%s","worker_id":"w1","status":"success",'
            '"data":{"echo":"hi"},"error":null,"data_metadata":null}' % (ID, ID)).encode()
    hdr = b"AVTSPOOL 1 %d %08x 1700000000 %s\n" % (len(body), zlib.crc32(body), url.encode())
    write(t, "spool", b"\x00" + hdr + body)
    write(t, "spool_badcrc", b"\x00" + hdr.replace(b"%08x" % zlib.crc32(body), b"00000000") + body)
    write(t, "spool_truncated", b"\x00" + hdr + body[:20])
    write(t, "spool_version", b"\x00" + hdr.replace(b"AVTSPOOL 1", b"AVTSPOOL 2") + body)
    bad = b"[1, 2]"
    write(t, "spool_notresult", b"\x00" + b"AVTSPOOL 1 %d %08x 1700000000 %s\n" % (
        len(bad), zlib.crc32(bad), url.encode()) + bad)
    write(t, "spool_foreign", b"\x00#!/bin/sh\necho hi\n")
    acc = ('{"a":1,"u":"%s","t":"echo","i":"%s","j":"%s"}\n' % (url, ID, ID)).encode()
    acc2 = ('{"a":2,"u":"%s","t":"crash","i":"t2","j":"j2"}\n' % url).encode()
    write(t, "journal", b"\x01" + acc + b"S 1\n" + acc2 + b"S 2\nE 1\n")
    write(t, "journal_torn", b"\x01" + acc + b"S 1\n" + acc2[:17])
    write(t, "journal_garbage", b"\x01S 99\nE -1\nX\n{\"a\":\"x\"}\n\x00\xff")
    write(t, "crashes", b"\x02" + b"2 crash\n5 echo\n")
    write(t, "crashes_bad", b"\x02" + b"-1 x\n99999999999999999999 y\nz\n 3\n")


def canon_seeds():
    """fuzz_canon: every distinct payload of the RXON 1.0b14 signature
    vectors (tests/data/rxon14/), then the edges the vectors do not reach."""
    import json
    import re
    t = "fuzz_canon"
    seen = set()
    for f in ("signature_vectors.json", "signature_vectors_extra.json"):
        with open(os.path.join(ROOT, "tests", "data", "rxon14", f), encoding="utf-8") as fh:
            vectors = json.load(fh)["vectors"]
        for v in vectors:
            if v["payload_json"] in seen:
                continue
            seen.add(v["payload_json"])
            write(t, "vec_" + re.sub(r"[^A-Za-z0-9]+", "_", v["name"]).strip("_"), v["payload_json"])
    write(t, "nul_escape", '{"a\\u0000":"\\u0000","a":1}')
    write(t, "dup_null", '{"a":[1,{"b":null}],"a":null,"b":{"c":1,"c":2}}')
    write(t, "security_dropped", '{"security":{"x":1e300},"bubbling_chain":[1e400],"v":1}')
    write(t, "ws", ' \t\r\n{ "a" : [ 1 , 2.50 , -0.0 , 1E-7 ] , "b" : { } }\r\n')
    write(t, "pow2", '{"a":7.2911220195563975e-304,"b":0.5,"c":2.2250738585072014e-308}')
    write(t, "long_digits", '{"a":0.1000000000000000055511151231257827021181583404541015625,'
          '"b":123456789012345678901234567890e-30}')
    write(t, "null_at_101", "{" + '"a":{' * 100 + '"n":null' + "}" * 100 + "}")
    write(t, "bad_utf8", b'{"a":"\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80"}')
    write(t, "trailing", '{"a":1} {}')
    write(t, "empty", "")


def canon_dict():
    """fuzz_canon.dict: member names the signer treats specially, numbers at
    the range and layout edges, escapes and UTF-8 edges (raw tokens)."""
    keys = ["security", "bubbling_chain", "signature", "signer_id", "a", ""]
    words = ['"%s"' % k for k in keys] + ['"%s":' % k for k in keys]
    words += ["{", "}", "[", "]", ":", ",", "null", "true", "false", " ", "\t", "\r\n",
              "1e-7", "1e16", "1e19", "1e20", "1e400", "1e-400", "18446744073709551615",
              "18446744073709551616", "-9223372036854775808", "-9223372036854775809", "0.00001",
              "9.999999999999999e-6", "5e-324", "-0", "-0.0", "1E2", "1e+2", "0.1", ".5", "01",
              "\\u0000", "\\u001f", "\\u2028", "\\ud83d\\ude00", "\\udc00", "\\ud800",
              '\\"', "\\\\", "\\/", "\\b", "\\n", "\xc3\xa9", "\xef\xbf\xbf",
              "\xf0\x90\x80\x80", "\xed\xa0\x80", "\xc0\xaf", "\x7f", "\xef\xbb\xbf"]
    write_dict("fuzz_canon", words)


if __name__ == "__main__":
    task_seeds()
    cfg_seeds()
    cfg_dict()
    json_dict("fuzz_task_parse", ["job_id", "task_id", "type", "params", "tracing_context",
                                  "params_metadata", "priority", "uri", "size", "etag"])
    json_dict("fuzz_rxon", ["status", "registered", "warning", "version", "error",
                                     "cancel_task_ids", "ok", "ttl_refreshed", "accepted",
                                     "ignored", "reason", "message", "transition", "command",
                                     "cancel_task", "task_id", "job_id"])
    write_dict("fuzz_ws_frame", ["HTTP/1.1 101 Switching Protocols\r\n", "HTTP/1.1 401 ",
                                 "\r\n", "\r\n\r\n", "Upgrade: websocket",
                                 "Connection: Upgrade", "Sec-WebSocket-Accept: ",
                                 "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "\x81", "\x01", "\x80",
                                 "\x88\x02\x03\xe8", "\x89\x00", "\x8a\x00",
                                 "\x7e\x01\x00", "\x7f\x00\x00\x00\x00\x00\x01\x00\x00"])
    ws_seeds()
    orch_seeds()
    state_seeds()
    canon_seeds()
    canon_dict()
    write_dict("fuzz_state", ["AVTSPOOL 1 ", "\n", "S ", "E ", '{"a":', '"u":', '"t":', '"i":',
                              '"j":', "http://127.0.0.1:8080", "1700000000 ", "00000000"])
