"""The connections the server holds, bounded in number and in the time a client may take to
send a request's headers.

A slow client (one header byte a second: a "slowloris") or an idle keep-alive connection
holds a socket and a file descriptor while doing nothing. Two limits keep such clients from
filling the server:

    header_timeout    a connection that has not sent a whole request head within this many
                      seconds (of connecting, or of its last response) is closed
    max_connections   when this many are open, a new connection pushes out the one that has
                      waited longest for a request head; if every open connection has a
                      request in flight, the new one gets 503 and is closed

so a new client is served at once however many idle or slow sockets are open. (A slow body
is the application's to bound: json_body.py's body timeout.)

The protocol is uvicorn's h11 protocol with three additions, marked below. Its state per
connection is `waiting_since`: the time it began waiting for a request head, or None while a
request is in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

ACCEPT_BATCH = 64          # connections asyncio accepts per wake-up (uvicorn's `backlog`)
SPARE_FILES = 64           # descriptors kept free for the model, logs, the listening socket


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float


def connection_cap(wanted: int, open_files_limit: int) -> int:
    """The most connections to hold: `wanted`, within what the open-files limit leaves once
    a whole accept batch and the spare descriptors are counted (so that accept() never
    fails with "Too many open files")."""
    return max(1, min(wanted, open_files_limit - ACCEPT_BATCH - SPARE_FILES))


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the new soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def bounded_protocol(limits: ConnectionLimits) -> type:
    """uvicorn's h11 protocol class, bounded by `limits` (pass it as uvicorn's `http`)."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"limits": limits})


def busy_response() -> bytes:
    """A whole HTTP 503 response in OpenAI's error shape, for a connection refused unread."""
    body = (b'{"error": {"message": "the server holds as many connections as it may; try '
            b'again later", "type": "server_error", "param": null, "code": null}}')
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % len(body)) + body


class BoundedH11Protocol(H11Protocol):
    limits: ConnectionLimits        # set by bounded_protocol
    waiting_since: float | None = None
    header_timer = None

    # -- addition 1: count the connection; over the cap, make room or refuse ----------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.wait_for_head()
        if len(self.connections) <= self.limits.max_connections:
            return
        waiting = [c for c in self.connections
                   if c is not self and getattr(c, "waiting_since", None) is not None]
        if waiting:
            oldest = min(waiting, key=lambda c: c.waiting_since)
            oldest.stop_waiting()
            oldest.transport.abort()        # its descriptor is freed now, not after a FIN
        else:
            self.stop_waiting()
            transport.write(busy_response())
            transport.close()

    # -- addition 2: a request head is in: its timer stops ----------------------------------
    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self.stop_waiting()

    # -- addition 3: the response is out: the connection waits for the next head -----------
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or
                                                self.cycle.response_complete):
            self.wait_for_head()

    def connection_lost(self, exc) -> None:
        self.stop_waiting()
        super().connection_lost(exc)

    # -- the header timer --------------------------------------------------------------------
    def wait_for_head(self) -> None:
        self.stop_waiting()
        self.waiting_since = time.monotonic()
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self.too_slow)

    def stop_waiting(self) -> None:
        self.waiting_since = None
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def too_slow(self) -> None:
        """No whole request head in time: close the connection, without a word in the log."""
        self.header_timer = None
        if self.waiting_since is not None and not self.transport.is_closing():
            self.waiting_since = None
            self.transport.abort()
