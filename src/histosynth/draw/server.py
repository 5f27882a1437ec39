"""The drawing page's server: plain ``http.server`` on loopback, no web framework.

Routes:
  GET  /                 the page (page.html)
  GET  /api/networks     the mask-run networks on offer: labels, colours, resolution, method
  POST /api/generate     {"network": i, "map": "data:image/png;base64,...", "seed": n}
                         -> {"tile": PNG data URL, "map": the map as the network saw it (PNG data
                         URL, in the label colours), "classes": pixel count per class}

The drawn image is resized to the network's resolution (nearest neighbour) and every pixel is
given the class of the nearest label colour, so anti-aliased brush edges are harmless.
Generation is deterministic for a given map, seed and network.

Limits (a page on loopback is still a server): a map larger than ``max_map_px`` on either side
is refused from its PNG header, before any pixel is decoded; every decoding error is a 400;
at most ``max_concurrent`` generations run at once and further requests get 503 with
Retry-After; a client that stops sending is dropped after ``timeout`` seconds.
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


MAX_MAP_PX = 4096
MAX_BODY_BYTES = 32 * 2**20


def decode_png_data_url(url: str, max_px: int = MAX_MAP_PX) -> np.ndarray:
    """The RGB pixels of a PNG data URL; ValueError for anything else, for a PNG larger than
    `max_px` on either side (read from the header, before decoding), or a corrupt one."""
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:image/png;base64,"):
        raise ValueError("map must be a PNG data URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except ValueError as exc:
        raise ValueError(f"map is not valid base64 ({exc})") from None
    # the size, from the PNG signature and IHDR chunk, before any image library sees the data
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("map is not a PNG (no PNG signature and IHDR header)")
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if w > max_px or h > max_px:
        raise ValueError(f"map is {w} x {h} px; the largest accepted is {max_px} x {max_px} px (draw smaller, or "
                         f"start histosynth draw with a larger --max-map-px)")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError...
        raise ValueError(f"map is not a readable PNG ({type(exc).__name__}: {exc})") from None
    try:
        return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise ValueError(f"map PNG cannot be decoded ({type(exc).__name__}: {exc})") from None


class Networks:
    """The offered networks, each read once at start-up, shared by the request threads."""

    def __init__(self, paths, device="cpu"):
        from histosynth.gan.checkpoint import load, load_generator, require_kind

        self.paths = [Path(p) for p in paths]
        self.device = device
        self.meta, self._G, self._lock = [], [], threading.Lock()
        for p in self.paths:
            ck = load(p)
            net = load_generator(p, device, ck)
            require_kind(net, ("mask",), "the drawing page")
            self._G.append(net)
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
        net = self.generator(i)
        G, labels, res = net.G, net.labels, net.options["resolution"]
        rgb = np.asarray(Image.fromarray(drawn_rgb).resize((res, res), Image.Resampling.NEAREST))
        m = labels.from_rgb(rgb)
        with self._lock:  # one forward pass at a time: torch CPU already uses every core
            tile = render(G, m[None], [seed], len(labels), self.device)[0]
        return tile, m, labels


def default_concurrency(device) -> int:
    """One generation per GPU, else one per CPU core."""
    import os

    if str(device).startswith("cuda"):
        return 1
    return max(1, os.cpu_count() or 1)


def make_handler(nets: Networks, max_map_px: int = MAX_MAP_PX, max_concurrent: int | None = None,
                 timeout: float = 30.0):
    page = (resources.files("histosynth.draw") / "page.html").read_text()
    slots = threading.BoundedSemaphore(max_concurrent or default_concurrency(nets.device))

    class Handler(BaseHTTPRequestHandler):
        request_timeout = timeout

        def setup(self):
            self.timeout = self.request_timeout  # socket timeout for every read of this request
            super().setup()

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
            if not slots.acquire(blocking=False):
                self.send_response(503)
                body = json.dumps({"error": "busy: the server is generating as many tiles as it allows at once; "
                                            "try again in a moment"}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(body)
                return None
            try:
                n = int(self.headers.get("Content-Length", "0"))
                if n > MAX_BODY_BYTES:
                    raise ValueError(f"request too large ({n} bytes; at most {MAX_BODY_BYTES})")
                body = self.rfile.read(n)
                if len(body) < n:
                    raise ValueError(f"request body ended after {len(body)} of {n} bytes")
                req = json.loads(body)
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                tile, m, labels = nets.generate(int(req.get("network", 0)), decode_png_data_url(req.get("map"), max_map_px),
                                                int(req.get("seed", 0)))
            except TimeoutError:
                self.close_connection = True
                return self._json(408, {"error": f"request body not received within {timeout:g} s"})
            except (ValueError, KeyError, TypeError, OverflowError, OSError) as exc:
                return self._json(400, {"error": str(exc)})
            finally:
                slots.release()
            counts = np.bincount(m.ravel(), minlength=len(labels))
            self._json(200, {"tile": _png_data_url(tile), "map": _png_data_url(labels.colorize(m)),
                             "classes": {nm: int(c) for nm, c in zip(labels.names, counts)}})

    return Handler


def make_server(network_paths, host="127.0.0.1", port=8765, device="cpu", max_map_px: int = MAX_MAP_PX,
                max_concurrent: int | None = None, timeout: float = 30.0) -> ThreadingHTTPServer:
    nets = Networks(network_paths, device)
    srv = ThreadingHTTPServer((host, port), make_handler(nets, max_map_px, max_concurrent, timeout))
    srv.daemon_threads = True
    return srv


def serve(network_paths, host="127.0.0.1", port=8765, device="cpu", open_browser=False, **limits) -> None:
    srv = make_server(network_paths, host, port, device, **limits)
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


def draw_command(network, host="127.0.0.1", port=8765, open=False, max_map_px=MAX_MAP_PX, max_concurrent=None,
                 timeout=30.0):
    """``histosynth draw``: serve the page for these mask-run networks on the visible GPU, else the CPU."""
    from histosynth.torch_utils.distributed import default_device

    serve(network, host=host, port=port, device=default_device(), open_browser=open, max_map_px=max_map_px,
          max_concurrent=max_concurrent, timeout=timeout)
