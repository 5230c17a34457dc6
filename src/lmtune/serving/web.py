"""The web page at `/`: static files that ship in the package (src/lmtune/web), served on the
same port as the API.

The page itself holds no data, so it loads without a key; everything it shows comes from the
API with the key the user types (sent as the bearer token, never as a cookie, so another site
cannot make the browser act for the user). A Content-Security-Policy allows scripts, styles,
images and connections from this server only: nothing the page shows (a sample holding
`<script>`, a file name) can run or load anything, and the page makes no request elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
PAGE_PATHS = ("/", "/favicon.ico")
STATIC_PREFIX = "/static/"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Cache-Control": "no-cache"}


def is_page_path(path: str) -> bool:
    """Paths answered without a key: the page and its static files hold no user data."""
    return path in PAGE_PATHS or path.startswith(STATIC_PREFIX)


class SecurityHeaders:
    """The page's headers on the page and its static files."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_page_path(scope["path"]):
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode()) for k, v in HEADERS.items()]}
            await send(message)
        return await self.app(scope, receive, with_headers)


def add_page(app) -> None:
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    @app.api_route("/", methods=["GET", "HEAD"])
    async def page():
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    async def favicon():
        return FileResponse(WEB / "static" / "favicon.svg", media_type="image/svg+xml")
