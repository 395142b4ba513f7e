"""The status page served at GET /: one self-contained HTML document (inline CSS, inline
script, inline SVG charts; nothing from a CDN). It carries no data: the script asks for
the token once (a form, or `#token=...` in the address, removed at once), keeps it in
sessionStorage and fetches the JSON routes with it. Everything from the API is put into
the page as text, never as HTML, and the Content-Security-Policy allows only this exact
script and style (by hash) and requests to the page's own origin. The HTML, CSS and
script live in page/ next to this module.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

_FILES = Path(__file__).with_name("page")  # package data, shipped with the code
_STYLE = (_FILES / "status.css").read_text(encoding="utf-8")
_SCRIPT = (_FILES / "status.js").read_text(encoding="utf-8")
_BODY = (_FILES / "status.html").read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


HTML = _BODY.replace("{style}", _STYLE).replace("{script}", _SCRIPT)

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    f"script-src {_hash(_SCRIPT)}",
    f"style-src {_hash(_STYLE)}",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
