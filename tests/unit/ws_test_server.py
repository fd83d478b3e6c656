#!/usr/bin/python3
"""ws_test_server.py - the WebSocket peer of tests/unit/test_ws.c.

An aiohttp server on 127.0.0.1 and an ephemeral port; with "--tls DIR" it
writes a self-signed certificate for 127.0.0.1 to DIR/cert.pem (key in
DIR/key.pem, made with the openssl command) and serves HTTPS. It prints
"PORT <n>" on stdout once it listens and exits when stdin reaches EOF (the
test binary holds the other end of the pipe, so the server never outlives
it) or on SIGTERM.

Paths:
  /echo       echoes text messages, except for these commands:
                token             -> "token=<X-Worker-Token>;rxon=<X-RXON-Version>"
                close CODE REASON -> the server closes with CODE and REASON
                big N [PING]      -> one N-byte text message in fragments of
                                     several sizes (a ping between them with PING)
                drop              -> "dropping", then the TCP connection is aborted
                last_close        -> the close code the previous client sent
                                     ("none" when it sent none)
                raw HEX           -> these bytes are written to the socket as is
  /push       sends "hello from server" right after the handshake, then echoes
  /authfail   Avtomatika's answer to a bad token: 101, then a plain
              "HTTP/1.1 401 Unauthorized" response in the upgraded stream
  /forbidden  403 instead of the upgrade
  /dropnow    101, then the connection is dropped at once
  /noping     a WebSocket that never answers pings
  /badaccept  a 101 with the Sec-WebSocket-Accept of RFC 6455's sample key,
              which is wrong for any random key
  /silent     never answers the handshake
"""

import asyncio
import os
import signal
import ssl
import struct
import subprocess
import sys

from aiohttp import web, WSMsgType

last_close = "none"
active = 0  # /echo and /push connections being served


def frame(opcode, payload, fin=True):
    """An unmasked (server) frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def big_message(n, with_ping):
    """n bytes of a-z in fragments of 100, 70000 (64-bit length), 300
    (16-bit length) bytes and then 4096-byte pieces."""
    data = bytes(ord("a") + i % 26 for i in range(n))
    sizes = [100, 70000, 300]
    out, off, first = b"", 0, True
    while off < n:
        size = sizes.pop(0) if sizes else 4096
        piece = data[off:off + size]
        off += len(piece)
        out += frame(1 if first else 0, piece, fin=off >= n)
        first = False
        if with_ping and off < n:
            out += frame(9, b"p")
    return out


async def command(request, ws, text):
    word, _, rest = text.partition(" ")
    if word == "token":
        await ws.send_str("token=%s;rxon=%s" % (request.headers.get("X-Worker-Token"),
                                                 request.headers.get("X-RXON-Version")))
    elif word == "close":
        code, _, reason = rest.partition(" ")
        await ws.close(code=int(code), message=reason.encode())
    elif word == "big":
        args = rest.split()
        request.transport.write(big_message(int(args[0]), len(args) > 1))
    elif word == "drop":
        await ws.send_str("dropping")
        request.transport.abort()
    elif word == "last_close":
        for _ in range(200):  # let the previous connection's handler finish first
            if active == 1:
                break
            await asyncio.sleep(0.01)
        await ws.send_str(last_close)
    elif word == "raw":
        request.transport.write(bytes.fromhex(rest))
    else:
        await ws.send_str(text)


async def serve_ws(request, ws):
    """Serve commands until the connection ends; then record how the client
    closed it (last_close)."""
    global last_close, active
    code = "none"
    active += 1
    try:
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                await command(request, ws, msg.data)
            elif msg.type == WSMsgType.CLOSE:
                code = str(msg.data)
                break
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
    finally:
        last_close = code
        active -= 1
    return ws


async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    return await serve_ws(request, ws)


async def push(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello from server")
    return await serve_ws(request, ws)


async def authfail(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request.transport.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 53\r\n\r\n"
                            b'{"error": "Unauthorized: No valid token found"}     ')
    request.transport.close()
    return ws


async def forbidden(request):
    return web.Response(status=403, text="forbidden")


async def dropnow(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request.transport.abort()
    return ws


async def noping(request):
    ws = web.WebSocketResponse(autoping=False)
    await ws.prepare(request)
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            break
    return ws


async def badaccept(request):
    request.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n"
                            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    await asyncio.sleep(3600)


async def silent(request):
    await asyncio.sleep(3600)


def tls_context(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main():
    ctx = tls_context(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "--tls" else None
    app = web.Application()
    for path, handler in (("/echo", echo), ("/push", push), ("/authfail", authfail),
                          ("/forbidden", forbidden), ("/dropnow", dropnow),
                          ("/noping", noping), ("/badaccept", badaccept), ("/silent", silent)):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=0.5, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print("PORT %d" % port, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_stdin():
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
