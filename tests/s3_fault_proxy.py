"""A loopback HTTP proxy that injects S3 faults between a client and a (moto) S3 server.

The client is pointed at the proxy (``endpoint_url = proxy.url``); every request is
either forwarded to the upstream server or, by a seeded random draw, answered with
a fault as a throttled or flaky S3 endpoint would:

* ``slowdown``: HTTP 503 with S3's ``SlowDown`` XML error body (the request is not
  forwarded, so nothing was stored);
* ``reset``:    the TCP connection is reset (RST, no answer);
* ``delay``:    the request is forwarded after ``delay_s`` seconds.

``injected`` counts what was done (``forwarded`` included), so a test can check the
faults really happened. The draw order depends on thread scheduling, but the seed
fixes the fault rates' sequence, so runs are comparable. Faults can be switched off
(``enabled = False``) for untimed setup and read-back, and ``fail_next = N`` answers
the next N requests with ``SlowDown`` whatever the draw.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message>"
                 b"<RequestId>fault-proxy</RequestId><HostId>fault-proxy</HostId></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
              "te", "trailer"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that drops its connection (a timed-out attempt) is no error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultProxy:
    """``FaultProxy(upstream, slowdown=0.10, reset=0.02, delay=0.03)``; ``start()``, ``stop()``."""

    def __init__(self, upstream: str, *, slowdown: float = 0.10, reset: float = 0.02,
                 delay: float = 0.03, delay_s: float = 2.0, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rates = {"slowdown": slowdown, "reset": reset, "delay": delay}
        self.delay_s = delay_s
        self.enabled = True
        self.fail_next = 0
        self.injected: Counter[str] = Counter()
        self._rnd = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def draw(self) -> str:
        """The fate of one request: 'slowdown', 'reset', 'delay' or 'forward'."""
        with self._lock:
            fate = "forward"
            if self.fail_next > 0:
                self.fail_next -= 1
                fate = "slowdown"
            elif self.enabled:
                r, edge = self._rnd.random(), 0.0
                for name, rate in self.rates.items():
                    edge += rate
                    if r < edge:
                        fate = name
                        break
            self.injected[fate] += 1
            return fate

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="s3-fault-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as botocore's connection pool expects

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (quiet)
            pass

        def _read_body(self) -> bytes:
            """The request body exactly as sent (chunked framing kept)."""
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                raw = bytearray()
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:           # trailers up to the empty line
                            tline = self.rfile.readline()
                            raw += tline
                            if tline in (b"\r\n", b"\n", b""):
                                return bytes(raw)
                    raw += self.rfile.read(size + 2)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response_only(status)
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if self.command != "HEAD" or body:
                self.send_header("Content-Length", str(len(body)))
            else:
                length = next((v for k, v in headers if k.lower() == "content-length"), "0")
                self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes) -> None:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in ("connection", "keep-alive", "proxy-connection"):
                        conn.putheader(k, v)
                conn.endheaders(message_body=body or None)
                resp = conn.getresponse()
                data = resp.read()
                self._send(resp.status, resp.getheaders(), data)
            finally:
                conn.close()

        def _handle(self) -> None:
            body = self._read_body()
            fate = proxy.draw()
            if fate == "reset":
                self._reset()
                return
            if fate == "slowdown":
                self._send(503, [("Content-Type", "application/xml")], SLOWDOWN_BODY)
                return
            if fate == "delay":
                time.sleep(proxy.delay_s)
            self._forward(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
