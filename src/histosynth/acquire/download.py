"""Verified, resumable downloads: nothing wrong or partial is ever left at the final path.

``fetch(source, dest, md5=..., size=...)`` streams `source` (an http(s) URL, a ``file://``
URL or a local path) to ``<dest>.partial`` in constant memory, resumes an interrupted
transfer with ``Range`` (also across runs), retries connection errors, timeouts, 5xx and 429
with exponential backoff (honouring ``Retry-After``), verifies size and MD5 (and the server's
``Content-MD5`` when sent), and only then renames into place. A file that keeps failing
verification raises :class:`DownloadError` naming the slide, the expected and the actual MD5.
"""
from __future__ import annotations

import base64
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from histosynth.acquire.http import SourceError, get_following_redirects
from histosynth.acquire.http import redact as _redact
from histosynth.acquire.http import retry_after_seconds as _retry_after_seconds
from histosynth.utils import UserError, fsync_dir, fsync_path, md5_of

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class DownloadError(UserError):
    """A slide could not be fetched and verified."""


class _Retryable(Exception):
    def __init__(self, msg, retry_after=None):
        super().__init__(msg)
        self.retry_after = retry_after


@dataclass
class FetchResult:
    path: Path
    md5: str
    size: int
    attempts: int
    resumed_bytes: int


def safe_filename(name: str) -> str:
    """A server-supplied file name reduced to one safe path component.

    Directory parts (``../``, absolute paths, backslashes) are dropped and characters outside
    ``[A-Za-z0-9._-]`` replaced; a name that is empty, ``.`` or ``..`` afterwards is refused."""
    name = unquote(name).replace("\\", "/").split("/")[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    if not name or name in {".", ".."}:
        raise DownloadError(f"server sent an unusable file name {name!r}")
    return name


def content_disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    m = (re.search(r"filename\*=(?:UTF-8'')?([^;]+)", header, re.I) or re.search(r'filename="([^"]*)"', header, re.I)
         or re.search(r"filename=([^;]+)", header, re.I))
    return safe_filename(m.group(1).strip()) if m else None


def _local_source(source: str) -> Path | None:
    u = urlparse(source)
    if u.scheme == "file":
        return Path(unquote(u.path))
    if u.scheme in ("", None) or (len(u.scheme) == 1 and os.name == "nt"):
        return Path(source)
    return None


class _Progress:
    def __init__(self, label, total, initial, enabled):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=label, disable=not enabled, leave=False)

    def update(self, n):
        self.bar.update(n)

    def close(self):
        self.bar.close()


def fetch(source: str, dest, *, md5: str | None = None, size: int | None = None, label: str | None = None,
          headers: dict | None = None, session=None, max_attempts: int = 6, backoff: float = 1.0,
          max_backoff: float = 60.0, timeout: float = 60.0, progress: bool = True,
          sleep=time.sleep, check=None) -> FetchResult:
    """Fetch `source` to `dest`, verified. See the module docstring for the guarantees.

    `check(path) -> str | None` is an extra verification of the complete file before it is
    renamed into place (e.g. "OpenSlide opens it"); a returned string is the problem found."""
    dest = Path(dest)
    label = label or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    md5 = md5.lower() if md5 else None
    if dest.exists():
        # A finished file is trusted only if it verifies; otherwise it is moved aside and refetched.
        actual = md5_of(dest)
        if (md5 is None or actual == md5) and (size is None or dest.stat().st_size == size):
            return FetchResult(dest, actual, dest.stat().st_size, 0, 0)
        log.warning("%s: existing %s does not verify (md5 %s), fetching again", label, dest, actual)
        dest.unlink()
    local = _local_source(source)
    attempts = 0
    resumed = 0
    verify_failures = 0
    delay = backoff
    while True:
        attempts += 1
        try:
            if local is not None:
                server_md5, total = _copy_local(local, partial, label, progress)
            else:
                have = partial.stat().st_size if partial.exists() else 0
                resumed = max(resumed, have)
                server_md5, total = _get_http(source, partial, label, headers or {}, session, timeout, progress)
        except _Retryable as exc:
            if attempts >= max_attempts:
                raise DownloadError(f"{label}: giving up after {attempts} attempts fetching {_redact(source)}: {exc}") from None
            wait = exc.retry_after if exc.retry_after is not None else delay
            wait = min(wait, max_backoff)
            log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", label, exc, wait, attempts, max_attempts)
            sleep(wait)
            delay = min(delay * 2, max_backoff)
            continue
        got = partial.stat().st_size
        expected_size = size if size is not None else total
        problems = []
        if expected_size is not None and got != expected_size:
            problems.append(f"size {got} bytes, expected {expected_size}")
        actual = md5_of(partial)
        if md5 and actual != md5:
            problems.append(f"md5 {actual}, expected {md5}")
        if server_md5 and actual != server_md5:
            problems.append(f"md5 {actual}, server's Content-MD5 says {server_md5}")
        format_problem = check(partial) if not problems and check is not None else None
        if not problems and not format_problem:
            fsync_path(partial)  # durable before it gets its final name, and the name after
            os.replace(partial, dest)
            fsync_dir(dest.parent)
            log.info("%s: verified %s (%d bytes, md5 %s)", label, dest, got, actual)
            return FetchResult(dest, actual, got, attempts, resumed)
        partial.unlink()
        where = f"local file {local}" if local is not None else f"the file from {_redact(source)}"
        if format_problem and (md5 or local is not None):
            # the bytes are the expected ones (or the user's own file): fetching again cannot help
            raise DownloadError(f"slide {label}: {where}: {format_problem}. Nothing was written to {dest}. Convert "
                                f"the file or drop the slide from the sample sheet.")
        if format_problem:
            problems.append(format_problem)
        if local is not None:
            raise DownloadError(f"slide {label}: {where} does not match the sample sheet ({'; '.join(problems)}). "
                                f"Nothing was written to {dest}. Check the sheet's md5/size for this slide, or the file.")
        verify_failures += 1
        if verify_failures >= 2 or attempts >= max_attempts:
            raise DownloadError(
                f"slide {label}: downloaded file from {_redact(source)} failed verification twice "
                f"({'; '.join(problems)}). Nothing was written to {dest}. Check the sample sheet's md5/size "
                f"for this slide, or the source file.")
        log.warning("%s: verification failed (%s); fetching again from the start", label, "; ".join(problems))


def _copy_local(src: Path, partial: Path, label, progress):
    if not src.is_file():
        raise DownloadError(f"slide {label}: source file {src} does not exist (check the manifest's path)")
    total = src.stat().st_size
    have = partial.stat().st_size if partial.exists() else 0
    if have > total:
        partial.unlink()
        have = 0
    bar = _Progress(label, total, have, progress)
    with open(src, "rb") as fin, open(partial, "ab") as fout:
        fin.seek(have)
        for block in iter(lambda: fin.read(CHUNK), b""):
            fout.write(block)
            bar.update(len(block))
    bar.close()
    return None, total


def _get_http(url, partial: Path, label, headers, session, timeout, progress):
    import requests

    sess = session or requests.Session()
    have = partial.stat().st_size if partial.exists() else 0
    req_headers = dict(headers)
    if have:
        req_headers["Range"] = f"bytes={have}-"
    try:
        # redirects followed by hand: a token for the API is never sent to another host
        resp, _ = get_following_redirects(sess, url, req_headers, stream=True, timeout=timeout)
    except SourceError as exc:
        raise DownloadError(f"slide {label}: {exc}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retryable(f"connection failed: {type(exc).__name__}") from None
    with resp:
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}", _retry_after_seconds(resp.headers.get("Retry-After")))
        if resp.status_code == 416:  # our partial is already complete, or bigger than the file
            partial.unlink()
            raise _Retryable("HTTP 416 for resumed range; restarting from zero", 0)
        if resp.status_code in (401, 403):
            raise DownloadError(f"slide {label}: access denied (HTTP {resp.status_code}) for {_redact(url)}; "
                                f"controlled-access files need a token (acquire.gdc.token_file or GDC_TOKEN)")
        if resp.status_code >= 400:
            raise DownloadError(f"slide {label}: HTTP {resp.status_code} for {_redact(url)}")
        total = None
        if resp.status_code == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                partial.unlink(missing_ok=True)
                raise _Retryable("server answered a different range than asked; restarting from zero", 0)
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored Range (or we asked none): start over
            mode = "wb"
            have = 0
            if resp.headers.get("Content-Length"):
                total = int(resp.headers["Content-Length"])
        server_md5 = None
        cmd5 = resp.headers.get("Content-MD5")
        if cmd5 and resp.status_code == 200:
            try:
                server_md5 = base64.b64decode(cmd5).hex()
            except ValueError:
                server_md5 = None
        bar = _Progress(label, total, have, progress)
        try:
            with open(partial, mode) as f:
                for block in resp.iter_content(CHUNK):
                    f.write(block)
                    bar.update(len(block))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Retryable(f"connection lost mid-body after {partial.stat().st_size} bytes: {type(exc).__name__}") from None
        finally:
            bar.close()
        if total is not None and partial.stat().st_size < total:
            raise _Retryable(f"body ended early ({partial.stat().st_size} of {total} bytes)")
    return server_md5, total
