"""HTTP requests to metadata services (GDC API, GTEx image server) with the download engine's
retry rules: connection errors, timeouts, 5xx and 429 are retried with exponential backoff,
honouring ``Retry-After``; anything else that is not a success is a clear error."""
from __future__ import annotations

import email.utils
import logging
import re
import time
from urllib.parse import urljoin, urlsplit

from histosynth.utils import UserError

log = logging.getLogger(__name__)


class SourceError(UserError):
    """A remote service answered something we cannot use."""


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def redact(url: str) -> str:
    """A URL safe to log: query values that look like credentials are masked."""
    return re.sub(r"(token|key|signature|sig)=[^&]+", r"\1=***", url, flags=re.I)


# Headers that carry a credential: sent only to the origin they were meant for.
CREDENTIAL_HEADERS = ("x-auth-token", "authorization", "cookie", "proxy-authorization")
MAX_REDIRECTS = 10


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit (443 for https, 80 for http)."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:
        port = None
    return scheme, (u.hostname or "").lower(), port or {"https": 443, "http": 80}.get(scheme)


def without_credentials(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}


def get_following_redirects(session, url: str, headers: dict, *, timeout: float, **kwargs):
    """``session.get`` that follows redirects itself: credential headers (``X-Auth-Token``...)
    go only to the first URL's scheme, host and port, and are dropped for any hop elsewhere
    (``requests`` keeps custom headers across hosts). Returns (response, final URL)."""
    first = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        hop_headers = headers if origin(url) == first else without_credentials(headers)
        resp = session.get(url, headers=hop_headers, timeout=timeout, allow_redirects=False, **kwargs)
        location = resp.headers.get("Location")
        if resp.status_code not in (301, 302, 303, 307, 308) or not location:
            return resp, url
        resp.close()
        nxt = urljoin(url, location)
        if origin(nxt)[0] not in ("http", "https"):
            raise SourceError(f"{redact(url)} redirected to {redact(nxt)}, which is not an http(s) URL")
        url = nxt
    raise SourceError(f"more than {MAX_REDIRECTS} redirects from {redact(url)}")


def request(method: str, url: str, *, session=None, what: str = "request", max_attempts: int = 6,
            backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 60.0, sleep=time.sleep,
            ok=(200,), **kwargs):
    """`session.request(method, url, **kwargs)` with retries; returns the response (status in `ok`).

    `what` names the request in messages (e.g. "GDC /files query page 3")."""
    import requests

    sess = session or requests.Session()
    delay = backoff
    for attempt in range(1, max_attempts + 1):
        wait = None
        try:
            resp = sess.request(method, url, timeout=timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            problem = f"connection failed ({type(exc).__name__})"
        else:
            if resp.status_code in ok:
                return resp
            if resp.status_code != 429 and resp.status_code < 500:
                body = resp.text[:300].strip().replace("\n", " ")
                resp.close()
                raise SourceError(f"{what}: HTTP {resp.status_code} from {redact(url)}" + (f": {body}" if body else ""))
            problem = f"HTTP {resp.status_code}"
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            resp.close()
        if attempt == max_attempts:
            raise SourceError(f"{what}: giving up after {attempt} attempts at {redact(url)}: {problem}")
        wait = min(wait if wait is not None else delay, max_backoff)
        log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", what, problem, wait, attempt, max_attempts)
        sleep(wait)
        delay = min(delay * 2, max_backoff)
    raise AssertionError("unreachable")
