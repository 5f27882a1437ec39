"""A loopback HTTP file server that injects faults, for download tests."""
from __future__ import annotations

import base64
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """Serves `files` (name -> bytes) at /data/<name>. `faults` (name -> list of fault names)
    are consumed one per request: drop (close mid-body), corrupt (flip a byte), 500, 429
    (Retry-After: 1), norange (ignore Range), shortlen (Content-Length too big, body short)."""

    def __init__(self, files: dict, faults: dict | None = None, content_md5=False, disposition=None):
        self.files, self.faults = files, {k: list(v) for k, v in (faults or {}).items()}
        self.content_md5, self.disposition = content_md5, disposition
        self.requests = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.split("/")[-1]
                outer.requests.append((name, self.headers.get("Range")))
                data = outer.files.get(name)
                if data is None:
                    self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
                fault = outer.faults.get(name, []).pop(0) if outer.faults.get(name) else None
                if fault == "500":
                    self.send_response(500); self.send_header("Content-Length", "0"); self.end_headers(); return
                if fault == "429":
                    self.send_response(429); self.send_header("Retry-After", "1"); self.send_header("Content-Length", "0")
                    self.end_headers(); return
                start = 0
                rng = self.headers.get("Range")
                if rng and fault != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    if outer.content_md5:
                        self.send_header("Content-MD5", base64.b64encode(hashlib.md5(data).digest()).decode())
                body = data[start:]
                if fault == "corrupt":
                    body = bytearray(body); body[len(body) // 2] ^= 0xFF; body = bytes(body)
                self.send_header("Content-Length", str(len(body) + (100 if fault == "shortlen" else 0)))
                if outer.disposition:
                    self.send_header("Content-Disposition", f'attachment; filename="{outer.disposition}"')
                self.end_headers()
                if fault in ("drop", "shortlen"):
                    self.wfile.write(body[: len(body) // 3]); self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()
