"""Who may use the web view, as one ASGI middleware (SPEC 14).

- Every request carries the token, on every address (loopback is not a user boundary:
  every local process can connect to it): `Authorization: Bearer T`, the
  `cairnd_token` cookie, or once `?token=T` on a GET, which sets the cookie (HttpOnly,
  SameSite=Strict) and redirects to the same path on the same origin without it; or it
  gets 401, pages, API and static files alike. (A page on another site cannot borrow
  the cookie either: SameSite=Strict, and a DNS name pointed at 127.0.0.1 is another
  site, with no cookie of ours.)
- Every state-changing request (any method but GET, HEAD, OPTIONS) carries the CSRF
  token the pages hold (`X-CSRF-Token`), or gets 403.
- Every response says what it may load: a Content-Security-Policy allowing only the
  view's own scripts, styles and connections (no inline script runs), no framing,
  no sniffing, no referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_COOKIE = "cairnd_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8765` for IPv6) as (host, port); ValueError when it is not."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin_location(path: str, query: str) -> str:
    """Where the `?token=` redirect sends the browser: this origin's `path`, never another
    host. A path starting `//` or `/\\` would read as a network-path reference (another
    host) in a Location header, so it becomes one slash; the rest is percent-encoded, so
    no byte of it can end the header or start a scheme."""
    kept = "/" + path.lstrip("/\\")
    return quote(kept, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")


class Guard:
    """The middleware; `csrf_token` is what pages embed for their requests."""

    def __init__(self, app: ASGIApp, token: str, csrf_token: str | None = None) -> None:
        if not token:
            raise ValueError("the web view needs a token (cairnd.web.token.web_token)")
        self.app = app
        self.token = token
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        refused = self._authenticate(scope, headers)
        if refused is not None:
            await refused(send_secured)
            return
        if scope["method"] not in SAFE_METHODS:
            given = headers.get(CSRF_HEADER, "")
            if not given or not hmac.compare_digest(given.encode(), self.csrf_token.encode()):
                await _plain(403, "forbidden: missing or wrong CSRF token (reload the page)")(send_secured)
                return
        await self.app(scope, receive, send_secured)

    def _authenticate(self, scope: Scope, headers: dict[str, str]) -> Callable[[Send], Awaitable[None]] | None:
        """None when the request carries the token; else the response to send."""
        expected = self.token.encode()
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), expected):
            return None
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001  (a malformed cookie header is no token)
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie and hmac.compare_digest(cookie[TOKEN_COOKIE].value.encode(), expected):
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for key, value in query if key == "token"]
        if given and hmac.compare_digest(given[-1].encode(), expected) and scope["method"] in SAFE_METHODS:
            rest = urlencode([(key, value) for key, value in query if key != "token"])
            location = same_origin_location(scope.get("root_path", "") + scope["path"], rest)
            secure = "; Secure" if headers.get("x-forwarded-proto") == "https" or scope.get("scheme") == "https" else ""
            return _redirect(location, f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict{secure}")
        return _plain(401, "unauthorized: this web view needs its token ([web] token, or the one kept in "
                           "<state>/web.token; `cairnd web` prints the address with it): open it once "
                           "with ?token=TOKEN, or send Authorization: Bearer TOKEN",
                      [(b"www-authenticate", b'Bearer realm="cairnd"')])


def _plain(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> Callable[[Send], Awaitable[None]]:
    body = (text + "\n").encode()

    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store"), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})
    return respond


def _redirect(location: str, cookie: str) -> Callable[[Send], Awaitable[None]]:
    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode("latin-1", errors="replace")),
                                (b"set-cookie", cookie.encode("latin-1")),
                                (b"content-length", b"0"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})
    return respond
