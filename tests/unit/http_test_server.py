#!/usr/bin/python3
"""A small HTTP/1.1 server for tests/unit/test_http.c.

It listens on 127.0.0.1 on an ephemeral port, prints the port on the first
line of stdout, and exits when its stdin reaches EOF (the test binary holds
the other end, so the server never outlives it). It is written on raw
asyncio streams so that keep-alive, connection counting and misbehaviour
(closing without an answer) are exactly under the test's control.

Endpoints:
  GET  /hello              200 "hello world"
  ANY  /info               200 "<METHOD> cl=<Content-Length|-> ct=<Content-Type|->"
                           "\\n" followed by the request body
  POST /expect             "expect=<Expect header|-> len=<body length>"
  ANY  /status/<N>         status N ("" for 204, "status N" otherwise)
  GET  /gzip               a gzip-encoded body of 5000 lines "line <i>\\n"
                           (406 when the request does not accept gzip)
  GET  /retry?after=<V>    429 with "Retry-After: V"
  GET  /retry-date         429 with an HTTP-date Retry-After 30 s ahead
  GET  /big?n=<N>          N bytes of "x"
  GET  /chunked?n=<N>      N bytes of "x" in chunks of 1000, without Content-Length
  GET  /sleep?ms=<N>       waits N ms, then 200 "slept"
  GET  /close              closes the connection without answering
  GET  /conns              the number of TCP connections accepted so far
  GET  /rxon?date=<D>&v=<V>  200 with "Date: D" and "X-RXON-Version: V" (each
                           only when given)
  GET  /redirect?n=<N>&code=<C>  C (default 302) to /redirect?n=N-1, and at n=0
                           to /page; each redirect has a 100000-byte body
  GET  /redirect-to?url=<U>  302 to U
  GET  /page               200 UTF-8 text/html with "X-Tag: a" and "X-Tag: b"
  GET  /bytes              200 application/octet-stream: the bytes 0..255
  GET  /ua                 200 with the request's User-Agent as the body
"""
import asyncio
import gzip
import sys
import time
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 406: "Not Acceptable", 429: "Too Many Requests",
           500: "Internal Server Error"}
accepted = 0


def gzip_body():
    return gzip.compress("".join("line %d\n" % i for i in range(5000)).encode())


GZIP_BODY = gzip_body()
PAGE = "<p>h\u00e9llo \u2013 w\u00f6rld \u2603</p>\n"


async def read_request(reader):
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    n = int(headers.get("content-length", "0") or "0")
    body = await reader.readexactly(n) if n else b""
    return method, target, headers, body


async def route(method, target, headers, body):
    """Returns (status, extra headers, body) or None to drop the connection."""
    url = urlsplit(target)
    q = parse_qs(url.query)
    path = url.path
    if path == "/hello":
        return 200, [], b"hello world"
    if path == "/info":
        head = "%s cl=%s ct=%s\n" % (method, headers.get("content-length", "-"),
                                      headers.get("content-type", "-"))
        return 200, [], head.encode() + body
    if path == "/expect":
        return 200, [], ("expect=%s len=%d" % (headers.get("expect", "-"), len(body))).encode()
    if path.startswith("/status/"):
        code = int(path[len("/status/"):])
        return code, [], b"" if code == 204 else b"status %d" % code
    if path == "/gzip":
        if "gzip" not in headers.get("accept-encoding", ""):
            return 406, [], b"gzip please"
        return 200, [("Content-Encoding", "gzip")], GZIP_BODY
    if path == "/retry":
        return 429, [("Retry-After", q.get("after", ["1"])[0])], b"slow down"
    if path == "/retry-date":
        return 429, [("Retry-After", formatdate(time.time() + 30, usegmt=True))], b"later"
    if path == "/big":
        return 200, [], b"x" * int(q.get("n", ["0"])[0])
    if path == "/chunked":
        n, out = int(q.get("n", ["0"])[0]), b""
        while n > 0:
            k = min(n, 1000)
            out += b"%x\r\n" % k + b"x" * k + b"\r\n"
            n -= k
        return 200, [("Transfer-Encoding", "chunked")], out + b"0\r\n\r\n"
    if path == "/sleep":
        await asyncio.sleep(int(q.get("ms", ["1000"])[0]) / 1000.0)
        return 200, [], b"slept"
    if path == "/close":
        return None
    if path == "/conns":
        return 200, [], str(accepted).encode()
    if path == "/rxon":
        extra = [("Date", q["date"][0])] if "date" in q else []
        extra += [("X-RXON-Version", q["v"][0])] if "v" in q else []
        return 200, extra, b"{}"
    if path == "/redirect":
        n, code = int(q.get("n", ["1"])[0]), int(q.get("code", ["302"])[0])
        to = "/page" if n <= 0 else "/redirect?n=%d&code=%d" % (n - 1, code)
        return code, [("Location", to)], b"r" * 100000
    if path == "/redirect-to":
        return 302, [("Location", q["url"][0])], b"moved"
    if path == "/page":
        return 200, [("Content-Type", "text/html; charset=utf-8"), ("X-Tag", "a"),
                     ("X-Tag", "b")], PAGE.encode()
    if path == "/ua":
        return 200, [], headers.get("user-agent", "-").encode()
    if path == "/bytes":
        return 200, [("Content-Type", "application/octet-stream")], bytes(range(256))
    return 404, [], b"not found"


async def serve(reader, writer):
    global accepted
    accepted += 1
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                break
            method, target, headers, body = req
            answer = await route(method, target, headers, body)
            if answer is None:
                break
            status, extra, payload = answer
            lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
            lines += ["%s: %s" % kv for kv in extra]
            if status != 204 and ("Transfer-Encoding", "chunked") not in extra:
                lines.append("Content-Length: %d" % len(payload))
            lines.append("Connection: keep-alive")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while await stdin.read(4096):
        pass
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
