"""Loopback HTTP servers for download tests: a plain file server, a GDC API and a GTEx image
server, all able to inject faults. They are real HTTP/1.1 servers on 127.0.0.1."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

FAULTS = """Faults (consumed one per request of that file): drop (close mid-body), corrupt (flip a
byte), 500, 429 (Retry-After: 1), norange (ignore Range), shortlen (Content-Length larger than
the body, body cut short), html (a 200 error page instead of the file)."""


class FaultServer:
    """Serves `files` (name -> bytes) at /data/<name>. `faults`: name -> list of faults (see FAULTS).

    `disposition` is the Content-Disposition file name sent (default none); `token`: when set,
    names in `controlled` need ``X-Auth-Token: <token>`` (403 otherwise)."""

    def __init__(self, files: dict, faults: dict | None = None, content_md5=False, disposition=None, token=None,
                 controlled=(), redirects=None):
        self.redirects = dict(redirects or {})  # name -> URL answered with 302 Location
        self.files, self.faults = files, {k: list(v) for k, v in (faults or {}).items()}
        self.content_md5, self.disposition = content_md5, disposition
        self.token, self.controlled = token, set(controlled)
        self.requests = []  # (method, path, Range header, X-Auth-Token header)
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _record(self):
                outer.requests.append((self.command, self.path, self.headers.get("Range"), self.headers.get("X-Auth-Token")))

            def do_GET(self):
                self._record()
                outer.route(self)

            def do_HEAD(self):
                self._record()
                outer.route(self)

            def do_POST(self):
                self._record()
                self.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- routing ---------------------------------------------------------------------------
    def route(self, h):
        self.serve_file(h, urlparse(h.path).path.split("/")[-1])

    @staticmethod
    def reply(h, status, body=b"", headers=None):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def disposition_for(self, name):
        return self.disposition

    def serve_file(self, h, name):
        if name in self.redirects:
            return self.reply(h, 302, headers={"Location": self.redirects[name]})
        data = self.files.get(name)
        if data is None:
            return self.reply(h, 404, b'{"message": "not found"}')
        if name in self.controlled and h.headers.get("X-Auth-Token") != self.token:
            return self.reply(h, 403, b'{"message": "controlled access: token required"}')
        if h.command == "HEAD":
            return self.reply_head(h, len(data))
        fault = self.faults.get(name, []).pop(0) if self.faults.get(name) else None
        if fault == "500":
            return self.reply(h, 500)
        if fault == "429":
            return self.reply(h, 429, headers={"Retry-After": "1"})
        if fault == "html":
            return self.reply(h, 200, b"<html><body>Temporarily unavailable</body></html>", {"Content-Type": "text/html"})
        start = 0
        rng = h.headers.get("Range")
        if rng and fault != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
            if self.content_md5:
                h.send_header("Content-MD5", base64.b64encode(hashlib.md5(data).digest()).decode())
        body = data[start:]
        if fault == "corrupt":
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        h.send_header("Content-Length", str(len(body) + (100 if fault == "shortlen" else 0)))
        h.send_header("Accept-Ranges", "bytes")
        disp = self.disposition_for(name)
        if disp:
            h.send_header("Content-Disposition", f'attachment; filename="{disp}"')
        h.end_headers()
        if fault in ("drop", "shortlen"):
            h.wfile.write(body[: len(body) // 3])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    def reply_head(self, h, size):
        h.send_response(200)
        h.send_header("Content-Length", str(size))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- GDC -----------------------------------------------------------------------------------------
def _values(record, dotted):
    level = [record]
    for part in dotted.split("."):
        nxt = []
        for item in level:
            v = item.get(part) if isinstance(item, dict) else None
            nxt.extend(v if isinstance(v, list) else ([] if v is None else [v]))
        level = nxt
    return level


def _matches(record, flt):
    op, content = flt["op"], flt["content"]
    if op == "and":
        return all(_matches(record, c) for c in content)
    if op == "or":
        return any(_matches(record, c) for c in content)
    if op in ("in", "="):
        want = content["value"] if isinstance(content["value"], list) else [content["value"]]
        return any(v in want for v in _values(record, content["field"]))
    raise ValueError(f"filter op {op} not supported by the test server")


def _project(record, fields):
    """Keep only the requested dotted fields (and file_id/id), nesting lists as GDC does."""
    def pick(obj, parts):
        if isinstance(obj, list):
            return [pick(o, parts) for o in obj]
        if not parts:
            return obj
        return {parts[0]: pick(obj[parts[0]], parts[1:])} if isinstance(obj, dict) and parts[0] in obj else {}

    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(out[k], v) if k in out else v
            return out
        if isinstance(a, list) and isinstance(b, list):
            return [merge(x, y) for x, y in zip(a, b)]
        return b

    out = {"id": record["file_id"]}
    for f in fields:
        out = merge(out, pick(record, f.split(".")))
    return out


class GDCServer(FaultServer):
    """Speaks the GDC API: ``/files`` (POST JSON or GET query; filters, fields, size/from paging,
    pagination block) and ``/data/<file_id>`` (Content-Disposition with the file name, Range,
    optional Content-MD5, X-Auth-Token for controlled files), with FaultServer's faults per file id.

    `records`: GDC file records (file_id, file_name, md5sum, file_size, state, data_type,
    data_format, experimental_strategy, cases: [{submitter_id, project: {project_id}, samples: [...]}])."""

    def __init__(self, records, files, evil_names=(), **kw):
        super().__init__(files, **kw)
        self.records = records
        self.evil_names = set(evil_names)  # file ids whose Content-Disposition tries path traversal
        self.queries = []

    def disposition_for(self, name):
        rec = next((r for r in self.records if r["file_id"] == name), None)
        if rec is None:
            return None
        return "../../../" + rec["file_name"] if name in self.evil_names else rec["file_name"]

    def route(self, h):
        u = urlparse(h.path)
        if u.path.rstrip("/") == "/files":
            return self.serve_query(h, u)
        if u.path.startswith("/data/"):
            return self.serve_file(h, u.path[len("/data/"):])
        return self.reply(h, 404)

    def serve_query(self, h, u):
        if h.command == "POST":
            try:
                p = json.loads(h.body)
            except ValueError:
                return self.reply(h, 400, b'{"message": "body is not JSON"}')
        else:
            p = {k: v[0] for k, v in parse_qs(u.query).items()}
        filters = p.get("filters")
        if isinstance(filters, str):
            filters = json.loads(filters)
        fields = p.get("fields", "file_id")
        fields = fields.split(",") if isinstance(fields, str) else fields
        size, frm = int(p.get("size", 10)), int(p.get("from", 0))
        self.queries.append({"method": h.command, "filters": filters, "fields": fields, "size": size, "from": frm})
        hits = [r for r in self.records if filters is None or _matches(r, filters)]
        page = hits[frm:frm + size]
        body = {"data": {"hits": [_project(r, fields) for r in page],
                         "pagination": {"count": len(page), "total": len(hits), "size": size, "from": frm,
                                        "sort": "", "page": frm // max(size, 1) + 1,
                                        "pages": -(-len(hits) // max(size, 1))}},
                "warnings": {}}
        self.reply(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})


class GTExServer(FaultServer):
    """A GTEx-like image server: ``/images/<tissue sample id>`` (GET and HEAD, no checksums) and
    ``/annotations.txt`` (the sample attributes file)."""

    def __init__(self, images: dict, annotations: str, **kw):
        super().__init__(images, **kw)
        self.annotations = annotations.encode()

    def route(self, h):
        path = urlparse(h.path).path
        if path.endswith("/annotations.txt"):
            return self.reply(h, 200, self.annotations, {"Content-Type": "text/plain"})
        if path.startswith("/images/"):
            return self.serve_file(h, path.split("/")[-1])
        return self.reply(h, 404)
