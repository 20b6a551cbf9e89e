"""Plain, accessible HTML pages: no scripts unless a page needs one (passkeys), no external assets."""

from __future__ import annotations

from html import escape

from aiohttp import web

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
    "a.button,button{display:block;width:100%;margin:.5rem 0;padding:.7rem;font-size:1rem;text-align:center;"
    "border:1px solid #444;border-radius:.4rem;background:#f4f4f4;color:#111;text-decoration:none;cursor:pointer}"
    "input{font-size:1.2rem;padding:.4rem;width:100%;box-sizing:border-box}"
    ".error{border-left:4px solid #b00;padding-left:1rem}"
)


def page(title: str, body_html: str, *, status: int = 200, script: str = "") -> web.Response:
    """A whole page. `body_html` must already be escaped (use `e()` for every value that came from outside)."""
    script_tag = f"<script>{script}</script>" if script else ""
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)} · pgwarden</title><style>{STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body_html}</main>{script_tag}</body></html>"
    )
    response = web.Response(text=html, content_type="text/html", status=status)
    # Login pages must never be framed (clickjacking) nor cached (they carry one-time state).
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def e(value: object) -> str:
    """HTML-escape a value for text or a quoted attribute."""
    return escape(str(value), quote=True)


def redirect(location: str, *, status: int = 302) -> web.Response:
    """A redirect to return from a handler (aiohttp 3.14 deprecates *returning* web.HTTPFound)."""
    response = web.Response(status=status, headers={"Location": location})
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(title: str, message: str, *, status: int = 403, hint: str = "") -> web.Response:
    hint_html = f"<p>{e(hint)}</p>" if hint else ""
    return page(title, f"<div class=error role=alert><p>{e(message)}</p>{hint_html}</div>", status=status)
