"""A small HTTP proxy that injects faults in front of an S3 endpoint (moto's server in tests).

    proxy = FaultProxy("http://127.0.0.1:5000").start()    # proxy.url goes to endpoint_url
    proxy.throttle_every = 7        # every 7th request: 503 SlowDown
    proxy.drop_every = 11           # every 11th object download: the body is cut off mid-way
    proxy.outage(3.0)               # for 3 s every connection is closed without an answer
    proxy.counts                    # requests seen and faults injected, by kind
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = b"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"""


class FaultProxy:
    def __init__(self, upstream: str):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.throttle_every = 0
        self.drop_every = 0
        self.outage_after = None  # (requests, seconds): an outage once that many requests were seen
        self.down_until = 0.0
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, BrokenPipeError):
                    self.close_connection = True

            def forward(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FaultProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def outage(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        self.counts["outages"] += 1

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.counts["requests"] += 1
            number = self.counts["requests"]
            if self.outage_after and number >= self.outage_after[0]:
                self.outage(self.outage_after[1])
                self.outage_after = None
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if time.monotonic() < self.down_until:
            self.counts["refused"] += 1
            request.close_connection = True
            request.connection.shutdown(2)  # the endpoint is gone: no answer at all
            return
        if self.throttle_every and number % self.throttle_every == 0:
            self.counts["throttled"] += 1
            request.send_response(503)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(SLOW_DOWN)))
            request.end_headers()
            request.wfile.write(SLOW_DOWN)
            return
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(request.command, request.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        drop = (self.drop_every and request.command == "GET" and response.status == 200 and len(data) > 64
                and "list-type" not in request.path and number % self.drop_every == 0)
        request.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "server", "date"):
                request.send_header(key, value)
        request.end_headers()
        if drop:
            self.counts["dropped"] += 1
            request.wfile.write(data[: len(data) // 2])  # the connection dies mid-download
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)
            return
        if request.command != "HEAD":
            request.wfile.write(data)
