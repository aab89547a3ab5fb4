"""Which web pages, and which host names, may reach the server.

A server on this machine with no API key (the default) can be reached by any web page its
user opens: a page may POST to http://127.0.0.1:8000, and a page on a domain whose DNS answer
is switched to 127.0.0.1 ("DNS rebinding") may even read the answers. Two checks refuse both:

    Origin   a browser names the page's origin on every cross-origin request and on every
             POST. A request that carries an Origin is served only if that origin is the
             server itself (its host and port are the request's Host) or is one of
             `allowed_origins`. Programs (curl, the openai client) send no Origin.
    Host     a server listening on a loopback address serves only requests whose Host is a
             loopback name (localhost, 127.0.0.1, [::1]): a rebound domain's requests carry
             that domain's name.

`allowed_origins` (--allowed-origins) also turns on CORS for those origins (Starlette's
CORSMiddleware, wrapped around this check by app.py), so that the pages named there can read
the answers. "*" allows every origin. Off by default.
"""

from __future__ import annotations

import ipaddress
import json

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether a listening address (or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" -> "::1"."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class OriginCheck:
    """ASGI middleware: 403 for a request from a page not allowed, or (when `loopback_only`)
    for a Host that is not a loopback name."""

    def __init__(self, app, allowed_origins: tuple[str, ...] = (), loopback_only: bool = True):
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins}
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
            refusal = None
            if self.loopback_only and not is_loopback(host_name(host)):
                refusal = (f"Host {host!r} is not this machine's name; a server listening on "
                           f"a loopback address answers only to localhost, 127.0.0.1 or [::1]",
                           "host_not_allowed")
            elif origin and not self.origin_allowed(origin, host):
                refusal = (f"requests from the page at {origin} are not allowed (start the "
                           f"server with --allowed-origins {origin} to allow them)",
                           "origin_not_allowed")
            if refusal is not None:
                await refuse(send, *refusal)
                return
        await self.app(scope, receive, send)

    def origin_allowed(self, origin: str, host: str) -> bool:
        if "*" in self.allowed or origin in self.allowed:
            return True
        # the server's own pages: an origin whose host and port are the request's Host
        return origin.split("://", 1)[-1] == host.lower()


async def refuse(send, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
