"""The drawing page's server: plain ``http.server`` on loopback, no web framework.

Routes:
  GET  /                 the page (page.html)
  GET  /api/networks     the mask-run networks on offer: labels, colours, resolution, method
  POST /api/generate     {"network": i, "map": "data:image/png;base64,...", "seed": n}
                         -> {"tile": PNG data URL, "map": the map as the network saw it (PNG data
                         URL, in the label colours), "classes": pixel count per class}

The drawn image may have any size; it is resized to the network's resolution (nearest
neighbour) and every pixel is given the class of the nearest label colour, so anti-aliased
brush edges are harmless. Generation is deterministic for a given map, seed and network.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _png_data_url(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_png_data_url(url: str) -> np.ndarray:
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:image/png;base64,"):
        raise ValueError("map must be a PNG data URL (data:image/png;base64,...)")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


class Networks:
    """The offered networks, each read once at start-up, shared by the request threads."""

    def __init__(self, paths, device="cpu"):
        from histosynth.gan.checkpoint import load
        from histosynth.gan.training.mask_loop import mask_generator_from_checkpoint

        self.paths = [Path(p) for p in paths]
        self.device = device
        self.meta, self._G, self._lock = [], [], threading.Lock()
        for p in self.paths:
            ck = load(p)
            self._G.append(mask_generator_from_checkpoint(p, device, ck))
            self.meta.append({"id": len(self.meta), "name": p.parent.name or p.name, "path": str(p),
                              "labels": ck["labels"], "resolution": ck["options"]["resolution"],
                              "method": ck["mask_options"]["method"], "kimg": ck["cur_nimg"] / 1000})

    def generator(self, i):
        return self._G[i]

    def generate(self, i: int, drawn_rgb: np.ndarray, seed: int):
        from PIL import Image

        from histosynth.generate.from_maps import render

        if not 0 <= i < len(self.paths):
            raise ValueError(f"no network {i}")
        G, labels, opts, _ = self.generator(i)
        res = opts["resolution"]
        rgb = np.asarray(Image.fromarray(drawn_rgb).resize((res, res), Image.Resampling.NEAREST))
        m = labels.from_rgb(rgb)
        with self._lock:  # one forward pass at a time: torch CPU already uses every core
            tile = render(G, m[None], [seed], len(labels), self.device)[0]
        return tile, m, labels


def make_handler(nets: Networks):
    page = (resources.files("histosynth.draw") / "page.html").read_text()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, code, body: bytes, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code, obj):
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/networks":
                self._json(200, nets.meta)
            else:
                self._json(404, {"error": f"no such page: {self.path}"})

        def do_POST(self):
            if self.path != "/api/generate":
                return self._json(404, {"error": f"no such endpoint: {self.path}"})
            try:
                n = int(self.headers.get("Content-Length", "0"))
                if n > 32 * 2**20:
                    raise ValueError("request too large (over 32 MB)")
                req = json.loads(self.rfile.read(n))
                tile, m, labels = nets.generate(int(req.get("network", 0)), decode_png_data_url(req.get("map")),
                                                int(req.get("seed", 0)))
            except (ValueError, KeyError, TypeError, json.JSONDecodeError, OSError) as exc:
                return self._json(400, {"error": str(exc)})
            counts = np.bincount(m.ravel(), minlength=len(labels))
            self._json(200, {"tile": _png_data_url(tile), "map": _png_data_url(labels.colorize(m)),
                             "classes": {nm: int(c) for nm, c in zip(labels.names, counts)}})

    return Handler


def make_server(network_paths, host="127.0.0.1", port=8765, device="cpu") -> ThreadingHTTPServer:
    nets = Networks(network_paths, device)
    srv = ThreadingHTTPServer((host, port), make_handler(nets))
    srv.daemon_threads = True
    return srv


def serve(network_paths, host="127.0.0.1", port=8765, device="cpu", open_browser=False) -> None:
    srv = make_server(network_paths, host, port, device)
    url = f"http://{host}:{srv.server_address[1]}/"
    print(f"histosynth draw: open {url}  (Ctrl-C stops)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the page", host)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
