"""The drawing page's server, and the class page beside it: plain ``http.server`` on loopback,
no web framework. It offers label-map (mask-run) networks to the drawing page and
class-conditional StyleGAN2 networks (class or attributes runs) to the class page.

Routes:
  GET  /                 the drawing page (page.html); the class page when no mask network is offered
  GET  /classes          the class page (classes.html)
  GET  /api/networks     the networks on offer: kind, resolution; mask runs: labels, colours,
                         method; class runs: conditions (the class or attribute combinations)
  POST /api/generate     {"network": i, "map": "data:image/png;base64,...", "seed": n}
                         -> {"tile": PNG data URL, "map": the map as the network saw it (PNG data
                         URL, in the label colours), "classes": pixel count per class}
  POST /api/class        {"network": i, "condition": name, "blend_to": name (optional), "t": 0..1,
                         "seed": n, "psi": 0..1} -> {"tile": PNG data URL, "c": the condition
                         vector}: z = RandomState(seed).randn(z_dim) (NVIDIA's convention, as
                         ``histosynth generate-images``), the condition (1 - t) c + t c_blend_to,
                         truncation psi towards the mean w, constant noise

The drawn image is resized to the network's resolution (nearest neighbour) and every pixel is
given the class of the nearest label colour, so anti-aliased brush edges are harmless.
Generation is deterministic for a given map, seed and network.

Limits (a page on loopback is still a server): a map larger than ``max_map_px`` on either side
is refused from its PNG header, before any pixel is decoded; every decoding error is a 400;
the whole body is read within one deadline of ``timeout`` seconds (a Content-Length that is
missing, negative or over 32 MiB is refused first) before a generation slot is taken, so a
client that trickles bytes holds no slot; at most ``max_concurrent`` generations run at once
and further requests get 503 with Retry-After; JSON nested too deeply is a 400. Requests whose
``Host`` (or ``Origin``) is not a name of this server (loopback names, the address bound,
``--allow-host``) get 403, so a web page cannot reach the server through DNS rebinding; the
pages insert label and condition names as text, never as HTML.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
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
            require_kind(net, ("mask", "class", "attributes"), "the drawing and class pages")
            self._G.append(net)
            meta = {"id": len(self.meta), "name": p.parent.name or p.name, "path": str(p), "kind": net.kind,
                    "resolution": ck["options"]["resolution"], "kimg": ck["cur_nimg"] / 1000}
            if net.kind == "mask":
                meta.update(labels=ck["labels"], method=ck["mask_options"]["method"])
            else:
                meta.update(conditions=[net.spec.name(c) for c in net.spec.conditions()],
                            columns=net.spec.columns, categories=net.spec.categories)
            self.meta.append(meta)

    def generator(self, i, kind: str):
        """Network `i`, which must be a mask network (kind "mask") or a class/attributes one."""
        if not 0 <= i < len(self.paths):
            raise ValueError(f"no network {i} (there are {len(self.paths)})")
        net = self._G[i]
        if (net.kind == "mask") != (kind == "mask"):
            raise ValueError(f"network {i} is a {net.kind!r} network; this page needs "
                             f"{'a mask' if kind == 'mask' else 'a class or attributes'} network")
        return net

    def generate_class(self, i: int, condition: str, seed: int, psi: float = 1.0, blend_to: str | None = None,
                       t: float = 0.0):
        """(uint8 tile, condition vector) for the class page."""
        import pandas as pd
        import torch

        from histosynth.generate.sample import z_from_seeds
        from histosynth.torch_utils.images import to_uint8

        net = self.generator(i, "class")
        spec = net.spec
        by_name = {spec.name(c): c for c in spec.conditions()}
        for name in (condition, blend_to):
            if name is not None and name not in by_name:
                raise ValueError(f"unknown condition {name!r}; this network knows {sorted(by_name)}")
        if not (0 <= t <= 1 and 0 <= psi <= 1):
            raise ValueError(f"t and psi must lie in [0, 1] (got t={t}, psi={psi})")
        if not 0 <= seed < 2 ** 32:
            raise ValueError(f"seed must be in [0, 2^32), not {seed}")
        c = torch.from_numpy(spec.encode(pd.DataFrame([by_name[condition]])))
        if blend_to is not None:
            c = c.lerp(torch.from_numpy(spec.encode(pd.DataFrame([by_name[blend_to]]))), float(t))
        with self._lock, torch.no_grad():
            img = net.G(z_from_seeds([seed], net.z_dim).to(self.device), c.to(self.device), psi=float(psi),
                        noise_mode="const")
        return to_uint8(img)[0], c[0].tolist()

    def generate(self, i: int, drawn_rgb: np.ndarray, seed: int):
        from PIL import Image

        from histosynth.generate.from_maps import render

        net = self.generator(i, "mask")
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


class _Refused(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _host_name(value: str | None) -> str | None:
    """The host part of a Host header (``name``, ``name:port``, ``[v6]:port``), lower case."""
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(bind_host: str, extra=()) -> set:
    """Names a request's Host may carry: the loopback names, the address bound (unless a
    wildcard) and the names given with --allow-host."""
    hosts = set(LOOPBACK_NAMES) | {h.strip().lower().strip("[]") for h in extra if h.strip()}
    if bind_host not in ("", "0.0.0.0", "::"):
        hosts.add(bind_host.lower().strip("[]"))
    return hosts


def make_handler(nets: Networks, max_map_px: int = MAX_MAP_PX, max_concurrent: int | None = None,
                 timeout: float = 30.0, hosts=None):
    hosts = set(hosts) if hosts is not None else set(LOOPBACK_NAMES)
    page = (resources.files("histosynth.draw") / "page.html").read_text()
    classes_page = (resources.files("histosynth.draw") / "classes.html").read_text()
    has_mask = any(m["kind"] == "mask" for m in nets.meta)
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

        def _allowed(self) -> str | None:
            """None when Host (and Origin, if sent) name this server; else the refusal. A page on
            another site that a DNS rebinding points at 127.0.0.1 sends its own name as Host."""
            host = _host_name(self.headers.get("Host"))
            if host is None or host not in hosts:
                return (f"Host {self.headers.get('Host')!r} is not a name of this server; it answers "
                        f"{sorted(hosts)} (start histosynth draw with --allow-host NAME to add one)")
            origin = self.headers.get("Origin")
            if origin and origin != "null":
                from urllib.parse import urlsplit

                try:
                    o_host = (urlsplit(origin).hostname or "").lower()
                except ValueError:
                    o_host = ""
                if o_host not in hosts:
                    return f"requests from pages of {origin!r} are not accepted"
            return None

        def do_GET(self):
            refusal = self._allowed()
            if refusal:
                return self._json(403, {"error": refusal})
            if self.path in ("/", "/index.html"):
                self._send(200, (page if has_mask else classes_page).encode(), "text/html; charset=utf-8")
            elif self.path in ("/classes", "/classes.html"):
                self._send(200, classes_page.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/networks":
                self._json(200, nets.meta)
            else:
                self._json(404, {"error": f"no such page: {self.path}"})

        def _read_body(self) -> bytes:
            """The whole request body, within one deadline of `timeout` seconds for all of it (a
            client trickling bytes cannot hold the connection longer); ValueError for a missing,
            negative or too large Content-Length."""
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise _Refused(411, "the request needs a Content-Length")
            try:
                n = int(raw.strip())
            except ValueError:
                raise _Refused(400, f"Content-Length {raw!r} is not a number") from None
            if n < 0:
                raise _Refused(400, f"Content-Length {n} is negative")
            if n > MAX_BODY_BYTES:
                raise _Refused(413, f"request too large ({n} bytes; at most {MAX_BODY_BYTES})")
            deadline = time.monotonic() + timeout
            chunks, got = [], 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(n - got, 1 << 16))
                if not chunk:
                    raise _Refused(400, f"request body ended after {got} of {n} bytes")
                chunks.append(chunk)
                got += len(chunk)
            self.connection.settimeout(timeout)
            return b"".join(chunks)

        def do_POST(self):
            refusal = self._allowed()
            if refusal:
                self.close_connection = True
                return self._json(403, {"error": refusal})
            if self.path not in ("/api/generate", "/api/class"):
                return self._json(404, {"error": f"no such endpoint: {self.path}"})
            try:  # the body is read before a generation slot is taken: a slow client holds none
                body = self._read_body()
            except TimeoutError:
                self.close_connection = True
                return self._json(408, {"error": f"request body not received within {timeout:g} s"})
            except _Refused as exc:
                self.close_connection = True
                return self._json(exc.code, {"error": str(exc)})
            except OSError as exc:
                self.close_connection = True
                return self._json(400, {"error": f"request body could not be read ({exc})"})
            try:
                req = json.loads(body)
            except RecursionError:
                return self._json(400, {"error": "request JSON is nested too deeply"})
            except (ValueError, UnicodeDecodeError) as exc:
                return self._json(400, {"error": f"request is not JSON ({exc})"})
            if not isinstance(req, dict):
                return self._json(400, {"error": "request must be a JSON object"})
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
                if self.path == "/api/class":
                    blend = req.get("blend_to")
                    tile, c = nets.generate_class(int(req.get("network", 0)), str(req.get("condition")),
                                                  int(req.get("seed", 0)), float(req.get("psi", 1.0)),
                                                  None if blend is None else str(blend), float(req.get("t", 0.0)))
                    return self._json(200, {"tile": _png_data_url(tile), "c": c})
                tile, m, labels = nets.generate(int(req.get("network", 0)), decode_png_data_url(req.get("map"), max_map_px),
                                                int(req.get("seed", 0)))
            except (ValueError, KeyError, TypeError, OverflowError, OSError) as exc:
                return self._json(400, {"error": str(exc)})
            finally:
                slots.release()
            counts = np.bincount(m.ravel(), minlength=len(labels))
            self._json(200, {"tile": _png_data_url(tile), "map": _png_data_url(labels.colorize(m)),
                             "classes": {nm: int(c) for nm, c in zip(labels.names, counts)}})

    return Handler


def make_server(network_paths, host="127.0.0.1", port=8765, device="cpu", max_map_px: int = MAX_MAP_PX,
                max_concurrent: int | None = None, timeout: float = 30.0, allow_host=()) -> ThreadingHTTPServer:
    nets = Networks(network_paths, device)
    srv = ThreadingHTTPServer((host, port), make_handler(nets, max_map_px, max_concurrent, timeout,
                                                         allowed_hosts(host, allow_host or ())))
    srv.daemon_threads = True
    return srv


def serve(network_paths, host="127.0.0.1", port=8765, device="cpu", open_browser=False, **limits) -> None:
    srv = make_server(network_paths, host, port, device, **limits)
    url = f"http://{host}:{srv.server_address[1]}/"
    print(f"histosynth draw: open {url}  (Ctrl-C stops)", flush=True)
    if host not in LOOPBACK_NAMES:
        log.warning("serving on %s: anyone who can reach this address can use the page; requests must name it as "
                    "Host %s (add names with --allow-host)", host, sorted(allowed_hosts(host, limits.get("allow_host") or ())))
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
                 timeout=30.0, allow_host=None):
    """``histosynth draw``: serve the drawing page (mask-run networks) and the class page (class and
    attributes runs) for these networks on the visible GPU, else the CPU."""
    from histosynth.torch_utils.distributed import default_device

    serve(network, host=host, port=port, device=default_device(), open_browser=open, max_map_px=max_map_px,
          max_concurrent=max_concurrent, timeout=timeout, allow_host=allow_host or ())
