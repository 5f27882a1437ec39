"""The drawing page in a real headless browser (Debian's chromium through chromedriver):
click a label, paint on the canvas, generate, and check the tile the page shows is exactly
what the network makes from the map the server saw."""
import base64
import io
import json
import shutil
import threading
import urllib.request

import numpy as np
import pytest
from PIL import Image

from histosynth.masks.labels import AUTO_LABELS

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


NEEDS_BROWSER = pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs chromium and chromedriver (apt "
                                   "install chromium chromium-driver; .ci/run installs them)")


def headless_chromium(tmp_path):
    """A headless chromium driven through chromedriver (selenium)."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    from test_masks import mask_opts
    from toydata import toy_mask_index

    from histosynth.gan.training.loop import train_mask

    tmp = tmp_path_factory.mktemp("draw")
    idx, _, _ = toy_mask_index(tmp, 64, 32)
    o, m = mask_opts("spade", kimg=0.2, snap_kimg=0.2, tick_kimg=0.1, batch=8)
    return train_mask(idx, tmp / "spade-layout", o, m, progress=False)


@pytest.fixture(scope="module")
def server(network):
    from histosynth.draw.server import make_server

    srv = make_server([network], port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _png(url):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_api_rejects_bad_input_and_is_deterministic(server):
    nets = json.loads(urllib.request.urlopen(server + "/api/networks").read())
    assert nets[0]["labels"] == AUTO_LABELS and nets[0]["resolution"] == 32 and nets[0]["method"] == "spade"
    req = urllib.request.Request(server + "/api/generate", data=json.dumps({"map": "not a png"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "PNG data URL" in json.loads(e.value.read())["error"]
    m = np.full((64, 64, 3), 255, np.uint8)
    m[10:40, 10:40] = (31, 58, 147)
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    body = json.dumps({"network": 0, "seed": 3, "map": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()})
    outs = [json.loads(urllib.request.urlopen(urllib.request.Request(server + "/api/generate", data=body.encode(),
                                                                     headers={"Content-Type": "application/json"})).read())
            for _ in range(2)]
    assert outs[0]["tile"] == outs[1]["tile"] and outs[0]["classes"]["nuclei"] == 15 * 15


@NEEDS_BROWSER
def test_page_round_trips_a_drawn_map_in_headless_chromium(server, network, tmp_path):
    driver = headless_chromium(tmp_path)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from histosynth.gan.checkpoint import load_generator
    from histosynth.generate.from_maps import render

    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
        driver.find_element(By.ID, "label-background").click()
        driver.find_element(By.ID, "fill").click()              # the whole map background...
        driver.find_element(By.ID, "label-nuclei").click()
        canvas = driver.find_element(By.ID, "canvas")           # ...then a nuclei stroke across the upper half
        ActionChains(driver).move_to_element_with_offset(canvas, -120, -100).click_and_hold() \
            .move_by_offset(120, 0).move_by_offset(120, 0).release().perform()
        seed = driver.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("7")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            driver.find_element(By.ID, "status").text
        tile = _png(driver.find_element(By.ID, "result").get_attribute("src"))
        seen = _png(driver.find_element(By.ID, "seen").get_attribute("src"))
        assert driver.find_element(By.ID, "dl_tile").get_attribute("href").startswith("data:image/png")
        assert driver.find_element(By.ID, "dl_map").get_attribute("download") == "label_map.png"
    finally:
        driver.quit()
    net = load_generator(network)
    G, labels = net.G, net.labels
    m = labels.from_rgb(seen)
    assert tile.shape == (32, 32, 3) and m.shape == (32, 32)
    # the stroke: nuclei in a horizontal band in the upper half, background elsewhere
    rows = np.flatnonzero((m == 2).any(1))
    assert len(rows) >= 2 and rows.max() < 16 and (m == 2).sum() > 40 and (m == 0).sum() > 500 and not (m == 1).any()
    np.testing.assert_array_equal(tile, render(G, m[None], [7], len(labels))[0])  # exactly the network's tile


def _png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _claimed_size(png: bytes, w: int, h: int) -> bytes:
    """The same PNG with its header claiming w x h pixels (valid CRC): 1 KB on the wire."""
    import struct
    import zlib

    ihdr = png[12:29]  # type + data of the IHDR chunk
    data = struct.pack(">II", w, h) + ihdr[12:]
    return png[:8] + struct.pack(">I", 13) + b"IHDR" + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + png[33:]


def _post(url, obj, timeout=60):
    req = urllib.request.Request(url + "/api/generate", data=json.dumps(obj).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
        return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


@pytest.fixture(scope="module")
def limited(network):
    from histosynth.draw.server import make_server

    servers = {}
    for name, kw in {"default": {}, "roomy": {"max_map_px": 100000},
                     "one": {"max_concurrent": 1, "timeout": 1.0}}.items():
        srv = make_server([network], port=0, **kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = (srv, f"http://127.0.0.1:{srv.server_address[1]}")
    yield {k: u for k, (_, u) in servers.items()}
    for srv, _ in servers.values():
        srv.shutdown()
        srv.server_close()


def test_oversized_corrupt_and_bomb_maps_are_400_before_decoding(limited):
    small = _png_bytes(np.full((8, 8, 3), 255, np.uint8))
    url = lambda b: "data:image/png;base64," + base64.b64encode(b).decode()  # noqa: E731
    code, body, _ = _post(limited["default"], {"map": url(_claimed_size(small, 20000, 20000))})
    assert code == 400 and "20000 x 20000 px; the largest accepted is 4096 x 4096" in body["error"]
    code, body, _ = _post(limited["default"], {"map": url(_claimed_size(small, 4097, 10))})
    assert code == 400 and "4097 x 10" in body["error"]
    # with the size limit raised, PIL's decompression-bomb guard answers, still as a 400
    code, body, _ = _post(limited["roomy"], {"map": url(_claimed_size(small, 20000, 20000))})
    assert code == 400 and "DecompressionBomb" in body["error"]
    for bad in (small[:40], b"GIF89a" + small[6:], b"\x00" * 64):
        code, body, _ = _post(limited["default"], {"map": url(bad)})
        assert code == 400 and "PNG" in body["error"], body
    code, body, _ = _post(limited["default"], {"map": "data:image/png;base64,@@@"})
    assert code == 400
    code, body, _ = _post(limited["default"], [1, 2])
    assert code == 400 and "JSON object" in body["error"]
    code, body, _ = _post(limited["default"], {"map": url(small), "seed": 1})
    assert code == 200 and sum(body["classes"].values()) == 32 * 32


def _raw(url, request: bytes, timeout=10) -> str:
    """Send raw bytes to the server; its reply's status line and body."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def _small_map():
    return "data:image/png;base64," + base64.b64encode(_png_bytes(np.full((8, 8, 3), 255, np.uint8))).decode()


def test_a_stalled_or_trickling_client_holds_no_slot_and_is_dropped(limited):
    import socket
    import time

    host, port = limited["one"].removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"map\": ")  # and never the rest
    time.sleep(0.3)
    code, body, _ = _post(limited["one"], {"map": _small_map()})  # its one slot is free meanwhile
    assert code == 200, body
    stalled.settimeout(10)
    reply = stalled.recv(4096).decode()  # the server gives up on it after its 1 s timeout
    assert reply.startswith("HTTP/1.0 408") or reply.startswith("HTTP/1.1 408"), reply[:100]
    stalled.close()
    # one byte every 0.4 s: each read is quick, but the whole body has one 1 s deadline
    trickle = socket.create_connection((host, int(port)))
    trickle.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
    t0, reply = time.monotonic(), b""
    trickle.settimeout(0.4)
    for _ in range(40):
        try:
            trickle.sendall(b" ")
        except OSError:
            break
        try:
            reply += trickle.recv(4096)
            if reply:
                break
        except TimeoutError:
            continue
    trickle.close()
    assert b" 408 " in reply.split(b"\r\n")[0], reply[:100]
    assert time.monotonic() - t0 < 3


def test_busy_server_answers_503(limited, monkeypatch):
    import time

    from histosynth.draw import server as srv_mod

    release, entered = threading.Event(), threading.Event()
    real = srv_mod.Networks.generate

    def slow(self, *a, **k):
        entered.set()
        release.wait(10)
        return real(self, *a, **k)

    monkeypatch.setattr(srv_mod.Networks, "generate", slow)
    first = {}
    t = threading.Thread(target=lambda: first.update(r=_post(limited["one"], {"map": _small_map()})))
    t.start()
    assert entered.wait(10)
    code, body, headers = _post(limited["one"], {"map": _small_map()})
    release.set()
    t.join(10)
    assert code == 503 and headers["Retry-After"] == "1" and "busy" in body["error"]
    assert first["r"][0] == 200
    time.sleep(0.05)
    assert _post(limited["one"], {"map": _small_map()})[0] == 200  # the slot is free again


def test_bad_lengths_deep_json_and_foreign_hosts_are_refused(limited):
    import time

    url = limited["one"]
    t0 = time.monotonic()
    reply = _raw(url, b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n"
                      + b"x" * 100_000)
    assert reply.split("\r\n")[0].split()[1] == "400" and "negative" in reply
    assert time.monotonic() - t0 < 2  # answered at once, not after reading until the client closes
    reply = _raw(url, b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n\r\n")
    assert " 413 " in reply.split("\r\n")[0] and "too large" in reply
    reply = _raw(url, b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: ten\r\n\r\n")
    assert " 400 " in reply.split("\r\n")[0]
    reply = _raw(url, b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert " 411 " in reply.split("\r\n")[0]
    deep = b"[" * 100_000 + b"]" * 100_000
    reply = _raw(url, b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
                 + str(len(deep)).encode() + b"\r\n\r\n" + deep)
    assert " 400 " in reply.split("\r\n")[0] and "nested too deeply" in reply
    # DNS rebinding: a page of another site reaches 127.0.0.1 under its own name
    for headers in (b"Host: evil.example:8765\r\n", b"Host: localhost\r\nOrigin: http://evil.example\r\n", b""):
        for req in (b"GET /api/networks HTTP/1.1\r\n" + headers + b"\r\n",
                    b"POST /api/generate HTTP/1.1\r\n" + headers + b"Content-Length: 2\r\n\r\n{}"):
            reply = _raw(url, req)
            assert " 403 " in reply.split("\r\n")[0], (req, reply[:200])
            assert "networks" not in reply.split("\r\n\r\n", 1)[1] or "error" in reply
    for host in (b"localhost", b"127.0.0.1", b"[::1]:1"):
        reply = _raw(url, b"GET /api/networks HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert " 200 " in reply.split("\r\n")[0], reply[:200]


def test_allowed_host_names():
    from histosynth.draw.server import _host_name, allowed_hosts

    assert _host_name("LocalHost:8765") == "localhost" and _host_name("[::1]:80") == "::1"
    assert _host_name("::1") == "::1" and _host_name(None) is None
    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert "10.1.2.3" in allowed_hosts("10.1.2.3") and "0.0.0.0" not in allowed_hosts("0.0.0.0")
    assert "gpu-node-7" in allowed_hosts("0.0.0.0", ["gpu-node-7"])


def test_pages_insert_names_from_network_files_as_text_only():
    """Label and condition names come from a network file someone sent: the pages must never
    parse them as HTML (innerHTML / insertAdjacentHTML / outerHTML with anything but "")."""
    import re
    from importlib import resources

    for page in ("page.html", "classes.html"):
        src = (resources.files("histosynth.draw") / page).read_text()
        for m in re.finditer(r"\.(innerHTML|outerHTML)\s*=\s*([^;]*);|insertAdjacentHTML|document\.write", src):
            assert m.group(0).endswith('= "";'), f"{page}: {m.group(0)}"


# --- the class page (class-conditional StyleGAN2 networks) ------------------------------------------

@pytest.fixture(scope="module")
def class_network(tmp_path_factory):
    """A small class-conditional network file (random weights: the page's job is to drive it)."""
    return write_class_network(tmp_path_factory.mktemp("classes") / "stylegan2-class" / "network.pt")


def write_class_network(path):
    import torch

    from histosynth.config import validate
    from histosynth.gan import checkpoint as ckpt
    from histosynth.gan.conditioning import ConditioningSpec
    from histosynth.gan.networks import build_generator

    o = validate({"gan": dict(resolution=16, z_dim=8, w_dim=16, mapping_layers=2, channel_base=256,
                              channel_max=16)})["gan"]
    spec = ConditioningSpec("class", ["label"], {"label": ["normal", "tumor"]})
    torch.manual_seed(0)
    G = build_generator(o, spec.dim)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    ckpt.save(path, ckpt.training_state("class", G=G.state_dict(), G_ema=G.state_dict(), options=o,
                                        conditioning=spec.to_dict(), cur_nimg=2000,
                                        training_set={"n_tiles": 0, "patients": []}))
    return path


@pytest.fixture(scope="module")
def both(network, class_network):
    from histosynth.draw.server import make_server

    srv = make_server([network, class_network], port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _class_tile(path, cond, seed, psi=1.0, blend_to=None, t=0.0):
    """What the network makes, computed here without the server."""
    import torch

    from histosynth.gan.checkpoint import load_generator
    from histosynth.generate.sample import z_from_seeds
    from histosynth.torch_utils.images import to_uint8

    net = load_generator(path)
    onehot = {"normal": [1.0, 0.0], "tumor": [0.0, 1.0]}
    c = torch.tensor([onehot[cond]])
    if blend_to:
        c = c.lerp(torch.tensor([onehot[blend_to]]), t)
    with torch.no_grad():
        return to_uint8(net.G(z_from_seeds([seed], 8), c, psi=psi, noise_mode="const"))[0]


def _post_class(url, obj):
    req = urllib.request.Request(url + "/api/class", data=json.dumps(obj).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req, timeout=60)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_class_api_is_deterministic_blends_and_refuses_what_it_cannot_do(both, class_network):
    nets = json.loads(urllib.request.urlopen(both + "/api/networks").read())
    assert [n["kind"] for n in nets] == ["mask", "class"] and nets[1]["conditions"] == ["normal", "tumor"]
    code, a = _post_class(both, {"network": 1, "condition": "tumor", "seed": 5, "psi": 0.7})
    _, b = _post_class(both, {"network": 1, "condition": "tumor", "seed": 5, "psi": 0.7})
    assert code == 200 and a == b and a["c"] == [0.0, 1.0]
    np.testing.assert_array_equal(_png(a["tile"]), _class_tile(class_network, "tumor", 5, 0.7))
    _, end = _post_class(both, {"network": 1, "condition": "tumor", "blend_to": "normal", "t": 1.0, "seed": 5})
    np.testing.assert_array_equal(_png(end["tile"]), _class_tile(class_network, "normal", 5))
    _, mid = _post_class(both, {"network": 1, "condition": "tumor", "blend_to": "normal", "t": 0.5, "seed": 5})
    assert mid["c"] == [0.5, 0.5]
    for bad, msg in [({"network": 1, "condition": "stroma"}, "unknown condition 'stroma'"),
                     ({"network": 1, "condition": "tumor", "psi": 2}, "must lie in [0, 1]"),
                     ({"network": 0, "condition": "tumor"}, "is a 'mask' network"),
                     ({"network": 5, "condition": "tumor"}, "no network 5")]:
        code, j = _post_class(both, bad)
        assert code == 400 and msg in j["error"], (bad, j)
    a_map = "data:image/png;base64," + base64.b64encode(_png_bytes(np.zeros((32, 32, 3), np.uint8))).decode()
    code, j, _ = _post(both, {"network": 1, "map": a_map, "seed": 0})
    assert code == 400 and "'class' network" in j["error"]


@NEEDS_BROWSER
def test_class_page_picks_class_seed_psi_and_blends_in_headless_chromium(both, class_network, tmp_path):
    driver = headless_chromium(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
    try:
        driver.get(both + "/classes")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: state(d) == "ready")
        assert [o.text for o in Select(driver.find_element(By.ID, "cond_a")).options] == ["normal", "tumor"]
        shown = []
        for cond, seed, psi, t in [("tumor", 3, 1.0, 0.0), ("normal", 3, 0.5, 0.0), ("normal", 3, 1.0, 0.5)]:
            Select(driver.find_element(By.ID, "cond_a")).select_by_visible_text(cond)
            Select(driver.find_element(By.ID, "cond_b")).select_by_visible_text("tumor")
            driver.execute_script("const s = document.getElementById('seed'); s.value = arguments[0];"
                                  "document.getElementById('psi').value = arguments[1];"
                                  "document.getElementById('t').value = arguments[2];", seed, psi, t)
            driver.execute_script("document.body.dataset.state = 'busy'")
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: state(d) in ("done", "error"))
            assert state(driver) == "done", driver.find_element(By.ID, "status").text
            shown.append(_png(driver.find_element(By.ID, "result").get_attribute("src")))
    finally:
        driver.quit()
    np.testing.assert_array_equal(shown[0], _class_tile(class_network, "tumor", 3))
    np.testing.assert_array_equal(shown[1], _class_tile(class_network, "normal", 3, psi=0.5))
    np.testing.assert_array_equal(shown[2], _class_tile(class_network, "normal", 3, blend_to="tumor", t=0.5))
    assert not np.array_equal(shown[0], shown[2])
