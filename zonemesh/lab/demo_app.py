"""The lab's demo application: a tiny HTTP service that says who and where it is.

    python -m zonemesh.lab.demo_app --service backend --zone zone-2 --port 8080
    python -m zonemesh.lab.demo_app --service frontend --zone zone-1 --port 8081 --upstream http://127.0.0.1:10001/

``GET /`` answers ``{"service", "zone", "instance"}``; with ``--upstream`` it first calls the
upstream (its sidecar's outbound listener) and nests that answer under ``"upstream"``, so one
curl shows which zone served the request. Errors from the upstream come back as 502 with the
reason, never as a hang (bounded timeout).
"""

from __future__ import annotations

import argparse
import json
import socket
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

UPSTREAM_TIMEOUT = 5.0


def make_handler(identity: dict[str, str], upstream: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: dict[str, Any] = dict(identity)
            status = 200
            if upstream:
                try:
                    with urllib.request.urlopen(upstream.rstrip("/") + self.path, timeout=UPSTREAM_TIMEOUT) as resp:
                        body["upstream"] = json.loads(resp.read())
                except urllib.error.HTTPError as exc:
                    status, body["error"] = 502, f"upstream answered {exc.code}: {exc.read()[:200]!r}"
                except (OSError, ValueError) as exc:
                    status, body["error"] = 502, f"upstream {upstream} failed: {exc}"
            raw = json.dumps(body).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="zonemesh lab demo app")
    parser.add_argument("--service", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--upstream", default="")
    args = parser.parse_args(argv)
    identity = {"service": args.service, "zone": args.zone, "instance": f"{socket.gethostname()}:{args.port}"}
    server = ThreadingHTTPServer((args.address, args.port), make_handler(identity, args.upstream))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
