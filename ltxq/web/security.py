"""What stands between the network and the spool: Host/Origin checks, the token, CSRF.

- Host: only the names the server was started for (loopback names, or --host), so a page on
  another site cannot reach us through a rebound DNS name.
- Origin: a request that says where it comes from must come from us (and Sec-Fetch-Site must
  not say cross-site).
- Token (when set): `Authorization: Bearer TOKEN`, or the HttpOnly SameSite=Strict cookie a
  `?token=TOKEN` URL was exchanged for (the token then leaves the URL by a redirect).
- CSRF (double submit): every response sets a random `ltxq_csrf` cookie if missing; every POST
  must echo it in the `X-CSRF-Token` header (htmx) or a `csrf` form field.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

CSRF_COOKIE = "ltxq_csrf"
TOKEN_COOKIE = "ltxq_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# On every response: scripts only from us (no inline ones), no framing (a framed page could be
# clicked into actions), no sniffing, no Referer to other sites (no-referrer would make the
# browser send `Origin: null` with our own form posts).
HEADERS = [(b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; media-src 'self'; connect-src 'self'; "
            b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
           (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin")]


def is_loopback(host: str) -> bool:
    """Tell whether HOST (a name or an address) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def this_machine_names() -> set[str]:
    """Return the names and addresses other machines reach this one by (for a wildcard bind)."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        with contextlib.suppress(OSError):
            names |= {info[4][0] for info in socket.getaddrinfo(name, None)}
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        names.add(s.getsockname()[0])
    return {n.lower() for n in names if n}


def _host_name(value: str) -> str:
    """Return the host part of a Host header or URL netloc (no port, no brackets)."""
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Guard:
    """The ASGI middleware that applies the rules above (CSRF of forms: `check_csrf`)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: set[str], token: str | None):
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refuse(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        cookies = request.cookies
        fresh_csrf = None if cookies.get(CSRF_COOKIE) else secrets.token_urlsafe(24)
        if fresh_csrf:
            scope.setdefault("state", {})["csrf"] = fresh_csrf
        else:
            scope.setdefault("state", {})["csrf"] = cookies[CSRF_COOKIE]

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).extend(HEADERS)
            if message["type"] == "http.response.start" and fresh_csrf:
                cookie = SimpleCookie()
                cookie[CSRF_COOKIE] = fresh_csrf
                cookie[CSRF_COOKIE]["path"] = "/"
                cookie[CSRF_COOKIE]["samesite"] = "Strict"
                header = cookie.output(header="").strip().encode()
                message.setdefault("headers", []).append((b"set-cookie", header))
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def refuse(self, request: Request) -> Response | None:
        """Return the refusal of REQUEST, or None to let it through."""
        host = _host_name(request.headers.get("host", "")).lower()
        if host not in self.allowed_hosts:
            return PlainTextResponse("unknown Host header (DNS rebinding guard)", 421)
        origin = request.headers.get("origin")
        if origin and origin != "null":
            netloc = urlsplit(origin).netloc
            if netloc.lower() != request.headers.get("host", "").lower():
                return PlainTextResponse("cross-origin request refused", 403)
        elif origin == "null" and request.method not in ("GET", "HEAD"):
            return PlainTextResponse("cross-origin request refused", 403)
        if request.headers.get("sec-fetch-site") == "cross-site":
            return PlainTextResponse("cross-site request refused", 403)
        if self.token is None:
            return None
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and _same(auth[7:].strip(), self.token):
            return None
        if _same(request.cookies.get(TOKEN_COOKIE, ""), self.token):
            return None
        given = request.query_params.get("token")
        if given is not None and _same(given, self.token) and request.method == "GET":
            query = urlencode([(k, v) for k, v in parse_qsl(request.url.query)
                               if k != "token"])
            path = "/" + request.url.path.lstrip("/")  # never `//host`: that leaves the site
            response = RedirectResponse(path + (f"?{query}" if query else ""), 303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                path="/")
            return response
        return PlainTextResponse("a token is required (Authorization: Bearer, or ?token= once)",
                                 401, headers={"WWW-Authenticate": "Bearer"})


async def check_csrf(request: Request) -> bool:
    """Tell whether a POST carries the CSRF cookie's value (header or form field)."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return False
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            sent = (await request.form()).get("csrf")
    return isinstance(sent, str) and _same(sent, cookie)


Endpoint = Callable[[Request], Awaitable[Response]]


def action(endpoint: Endpoint) -> Endpoint:
    """Wrap a POST endpoint: refuse it (403) without the CSRF token."""
    async def guarded(request: Request) -> Response:
        if not await check_csrf(request):
            return PlainTextResponse("missing or wrong CSRF token", 403)
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded
