#!/usr/bin/env python3
"""The loopback upstream of tests/tests/network.rs: plays api.anthropic.com and a git host.

HTTPS on 127.0.0.1 (the test's own CA signed the certificate; the netstack trusts it through a
[[route]] ca_pem), plus a plain-HTTP "host-only service" on 127.0.0.1 that the guest must not
reach. Prints "PORTS <https> <service>" on stdout once both listen; logs every HTTPS request
(method, path, headers) as one JSON line to --log.

  POST /v1/messages   Anthropic Messages: 401 unless x-api-key is the real key; else a
                      non-streaming response with usage, echoing the key it received in
                      "echo_key" (the netstack must scrub it back to the placeholder).
  /repo.git/...       git smart HTTP through `git http-backend` (CGI), Basic auth required
                      (401 + WWW-Authenticate without it); the password must be the real token.
"""
import argparse
import base64
import json
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = None
log_lock = threading.Lock()


def read_body(h):
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += h.rfile.read(size)
            h.rfile.readline()
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        sys.stderr.write("upstream: " + (fmt % a) + "\n")

    def record(self):
        with log_lock, open(args.log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")

    def send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def handle_any(self):
        self.record()
        body = read_body(self)
        if self.path.startswith("/v1/messages"):
            return self.messages()
        if self.path.startswith("/repo.git/"):
            return self.git(body)
        self.send(404, b"not found\n", "text/plain")

    def messages(self):
        key = self.headers.get("x-api-key", "")
        if key != args.api_key:
            return self.send(401, json.dumps({"type": "error", "error": {
                "type": "authentication_error", "message": "invalid x-api-key"}}).encode())
        resp = {
            "id": "msg_01ax", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "hello from the loopback upstream"}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 2000,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            "echo_key": key,
        }
        self.send(200, json.dumps(resp).encode())

    def git(self, body):
        auth = self.headers.get("Authorization", "")
        user = password = None
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        if password != args.token:
            return self.send(401, b"authentication required\n", "text/plain",
                             [("WWW-Authenticate", 'Basic realm="git"')])
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": args.git_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user or "",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode().splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        ctype = dict((k.lower(), v) for k, v in headers).pop("content-type", "text/plain")
        extra = [(k, v) for k, v in headers if k.lower() != "content-type"]
        self.send(status, payload, ctype, extra)


class HostOnly(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"host-only service: the guest must never read this\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        sys.stderr.write("host-only: " + (fmt % a) + "\n")


def main():
    global args
    p = argparse.ArgumentParser()
    for a in ("--cert", "--key", "--log", "--git-root", "--api-key", "--token"):
        p.add_argument(a, required=True)
    args = p.parse_args()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    service = ThreadingHTTPServer(("127.0.0.1", 0), HostOnly)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    print(f"PORTS {httpd.server_address[1]} {service.server_address[1]}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
