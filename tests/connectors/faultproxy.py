"""A fault-injecting HTTP proxy in front of a real storage server, for what no real
server does on demand: throttle (503 SlowDown, 429), refuse (403), lack a feature (501),
or say an object is archived (InvalidObjectState).

Terms: a *rule* matches requests by method and a regular expression on the path (and
optionally a header name) and answers the next ``times`` of them itself with an S3-style
XML error, without forwarding; every other request is forwarded unchanged (the ``Host``
header too, so signatures made for the proxy's address still verify). The *log* records
each request's method, path and headers, for tests that check what a client sent.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Rule:
    method: str
    path: str  # a regular expression searched in the request path
    status: int
    code: str
    times: int = 1
    header: str | None = None  # only requests carrying this header
    hits: int = 0

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        return (self.times > 0 and method == self.method and re.search(self.path, path) is not None
                and (self.header is None or self.header.lower() in headers))


@dataclass
class FaultProxy:
    """Listens on 127.0.0.1 (:attr:`port`) and forwards to ``target_port``."""

    target_port: int
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                rule = proxy._take(self.command, self.path, headers)
                if rule is not None:
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule.code}'
                               f"</Code><Message>injected by the test proxy</Message>"
                               f"<Resource>{self.path.split('?')[0]}</Resource></Error>").encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True,
                                        skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        upstream.putheader(name, value)
                    upstream.endheaders(body or None)
                    reply = upstream.getresponse()
                    data = reply.read()
                except OSError:
                    self.close_connection = True
                    self.send_error(502)
                    return
                finally:
                    upstream.close()
                self.send_response(reply.status, reply.reason)
                for name, value in reply.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self._lock:
            self.log.append((method, path, headers))
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def fail(self, method: str, path: str, status: int, code: str, times: int = 1,
             header: str | None = None) -> Rule:
        rule = Rule(method, path, status, code, times, header)
        with self._lock:
            self.rules.append(rule)
        return rule

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
