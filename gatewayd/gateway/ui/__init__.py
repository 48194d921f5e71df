"""The live status page (GET / and GET /ui): one self-contained HTML document, no request leaves gatewayd.

The page is kept as three files for editing (index.html links status.css and status.js); ``status_page``
inlines them into one document and builds a Content-Security-Policy that allows exactly those two inline
blocks (by their SHA-256) and fetches to gatewayd itself: nothing else loads or runs, which matters on a
page that holds the admin token."""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

_STYLESHEET_TAG = '<link rel="stylesheet" href="status.css">'
_SCRIPT_TAG = '<script src="status.js"></script>'


@dataclass(frozen=True, slots=True)
class StatusPage:
    html: bytes
    #: the Content-Security-Policy header value to send with ``html``
    content_security_policy: str


@functools.cache
def status_page() -> StatusPage:
    """The page, built once per process from the package's files (they do not change while it runs).
    Raises ValueError if index.html lacks the tags it inlines (a packaging mistake)."""
    folder = resources.files(__name__)
    html = folder.joinpath("index.html").read_text(encoding="utf-8")
    style = folder.joinpath("status.css").read_text(encoding="utf-8")
    script = folder.joinpath("status.js").read_text(encoding="utf-8")
    for tag in (_STYLESHEET_TAG, _SCRIPT_TAG):
        if html.count(tag) != 1:
            raise ValueError(f"index.html must contain {tag!r} exactly once")
    html = html.replace(_STYLESHEET_TAG, f"<style>{style}</style>").replace(
        _SCRIPT_TAG, f"<script>{script}</script>"
    )
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src '{_digest(script)}'",
            f"style-src '{_digest(style)}'",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return StatusPage(html.encode("utf-8"), policy)


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
