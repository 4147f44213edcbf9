#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for the e2e suite (stdlib only).

Usage: faultproxy.py LISTEN_PORT UPSTREAM_PORT [keep-host]

Forwards every request to 127.0.0.1:UPSTREAM_PORT and streams the answer back (with
keep-host, the client's Host header too, as a signed S3 request needs). The mode, set with
GET /__mode/<mode>, applies to blob GETs (paths with /blobs/sha256: or, in a bucket,
/blobs/sha256/):
  normal          pass through
  cut-once        cut each blob's first response at a random offset (later ones pass)
  cut-always      cut every blob response at a random offset
  throttle:<Bps>  send blob bodies at about <Bps> bytes per second
Each request is logged on stdout as: METHOD PATH RANGE-or-- STATUS
"""
import http.client
import http.server
import random
import sys
import threading
import time

MODE = ["normal"]
KEEP_HOST = len(sys.argv) > 3 and sys.argv[3] == "keep-host"
SEEN = set()
LOCK = threading.Lock()
CHUNK = 64 * 1024


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.forward()

    def do_GET(self):
        if self.path.startswith("/__mode/"):
            MODE[0] = self.path[len("/__mode/"):]
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.forward()

    def forward(self):
        up = http.client.HTTPConnection("127.0.0.1", UPSTREAM_PORT, timeout=60)
        drop = ("connection",) if KEEP_HOST else ("host", "connection")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
        up.request(self.command, self.path, headers=headers)
        resp = up.getresponse()
        print(self.command, self.path, self.headers.get("Range", "-"), resp.status, flush=True)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        length = int(resp.getheader("Content-Length") or 0)
        blob = ("/blobs/sha256:" in self.path or "/blobs/sha256/" in self.path) and self.command == "GET" and resp.status in (200, 206)
        mode = MODE[0]
        cut_at = None
        if blob and mode in ("cut-once", "cut-always") and length > 1:
            with LOCK:
                first = self.path not in SEEN
                SEEN.add(self.path)
            if mode == "cut-always" or first:
                cut_at = random.randint(1, length - 1)
        rate = float(mode.split(":", 1)[1]) if blob and mode.startswith("throttle:") else None
        sent = 0
        try:
            while True:
                want = CHUNK if cut_at is None else min(CHUNK, cut_at - sent)
                data = resp.read(want) if want > 0 else b""
                if not data:
                    break
                self.wfile.write(data)
                sent += len(data)
                if rate:
                    time.sleep(len(data) / rate)
            if cut_at is not None and sent >= cut_at:
                self.wfile.flush()
                self.connection.shutdown(2)  # a dropped connection, mid-body
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            up.close()
        self.close_connection = True


if __name__ == "__main__":
    PORT, UPSTREAM_PORT = int(sys.argv[1]), int(sys.argv[2])
    http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Proxy).serve_forever()
