"""Limits at the edge: what one client may hold of an API process.

Two layers, both set from ``Settings`` (docs/RELIABILITY.md, "Limits at the edge"):

- ``GuardedHttpToolsProtocol``, uvicorn's httptools protocol with what uvicorn leaves out:
  a cap on request-line + header bytes (431), a deadline for them (408; uvicorn's
  ``timeout_keep_alive`` only starts after a first response), and a cap on open connections
  (503, closed at once), so idle or slow partial-header connections cannot exhaust file
  descriptors; and a larger receive buffer for request bodies (``receive_buffer_bytes``). Run it with ``uvicorn --http service.edge:GuardedHttpToolsProtocol``
  (``shears up`` and ``shears api`` do).
- ``EdgeLimits``, an ASGI middleware: a deadline between two pieces of a request body (408,
  also for a declared Content-Length larger than the body), a token bucket per API key (429
  with ``Retry-After``), concurrent uploads per tenant (429), and the temporary disk that
  uploads in flight may fill (503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from http import HTTPStatus
from typing import ClassVar

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.config import Settings, get_settings

log = logging.getLogger("shears.edge")
PROBLEM_JSON = b"application/problem+json"
TYPE_BASE = "https://shears.dev/problems/"


def _problem_body(status: int, slug: str, detail: str) -> bytes:
    return json.dumps(
        {"type": TYPE_BASE + slug, "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    ).encode()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and time limits and a connection cap."""

    settings: ClassVar[Settings | None] = None  # None: read from the environment once

    @classmethod
    def bound_to(cls, settings: Settings) -> type[GuardedHttpToolsProtocol]:
        """A subclass that uses ``settings`` (``shears up`` hands uvicorn the class itself)."""
        return type(cls.__name__, (cls,), {"settings": settings})

    @classmethod
    def _limits(cls) -> Settings:
        if cls.settings is None:
            cls.settings = get_settings()
        return cls.settings

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self._limits()
        self._header_bytes = 0
        self._header_tail = b""  # the last bytes of the previous read: a blank line may straddle two
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > limits.max_connections:
            log.warning("refused a connection: %d open (SHEARS_MAX_CONNECTIONS)", len(self.connections) - 1)
            self._refuse(503, "too-many-connections", "The server has too many open connections; retry shortly.")
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self._limits().header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(
                408,
                "request-timeout",
                f"The request headers did not arrive within {self._limits().header_timeout_s:g} s.",
            )

    def _refuse(self, status: int, slug: str, detail: str) -> None:
        """Answer a problem and close, when no response of this connection is under way."""
        if self.cycle is None or self.cycle.response_complete:
            body = _problem_body(status, slug, detail)
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/problem+json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            if status == 503:
                head = head[:-2] + "retry-after: 1\r\n\r\n"
            self.transport.write(head.encode("latin-1") + body)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Count the request line and headers before the parser sees them (up to the blank line
        that ends them, so a body in the same read does not count): a header block that arrives
        whole in one read is refused as surely as one that trickles in."""
        if self.transport.is_closing():
            return
        if self._awaiting_headers:
            tail = self._header_tail
            window = tail + data
            end = window.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(tail))
            self._header_tail = window[-3:] if end < 0 else b""
            limit = self._limits().max_header_bytes
            if self._header_bytes > limit:
                self._refuse(431, "headers-too-large", f"The request line and headers are over {limit} bytes.")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._awaiting_headers:  # the next request on a keep-alive connection
            self._awaiting_headers = True
            self._header_bytes = 0
            self._header_tail = b""
            self._arm_header_timer()

    def on_body(self, body: bytes) -> None:
        """uvicorn's ``on_body`` with a larger high-water mark once the app reads the body:
        reading pauses when the unread body passes ``receive_buffer_bytes`` (uvicorn: 64 KiB),
        so a large upload reaches the app in pieces of about that size instead of 64 KiB ones
        and the event loop's per-piece work (pause, resume, wake the app) is done far less
        often. A request whose body no route reads keeps uvicorn's 64 KiB."""
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.body += body
        limit = self._limits().receive_buffer_bytes if getattr(self.cycle, "body_read", False) else HIGH_WATER_LIMIT
        if len(self.cycle.body) > limit:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._header_tail = b""
        self._cancel_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            receive = cycle.receive

            async def receive_marked():  # the app reads the body: it may arrive in larger pieces
                cycle.body_read = True
                return await receive()

            cycle.body_read = False
            cycle.receive = receive_marked  # looked up when the app starts, after this returns

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


class _TokenBuckets:
    """One token bucket per key (Retry-After = time to the next token); least recently used
    keys are forgotten past ``capacity`` entries, so random keys cannot grow memory."""

    def __init__(self, rate: float, burst: int, capacity: int = 10_000) -> None:
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when a request may pass; else the seconds until it may."""
        now = time.monotonic()
        tokens, last = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.capacity:
            self.buckets.popitem(last=False)
        return wait


class _Abort(Exception):
    def __init__(self, status: int, slug: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.retry_after = status, slug, detail, retry_after


class EdgeLimits:
    """ASGI middleware: body read deadline, rate per key, uploads per tenant, temporary disk."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.buckets = _TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.uploads: dict[str, int] = {}
        self.upload_bytes = 0  # bytes of multipart bodies in flight: what their temporary files hold

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(b"authorization", b"").partition(b" ")[2].strip()
        if key:
            wait = self.buckets.take(hashlib.sha256(key).hexdigest())
            if wait:
                await _send_problem(
                    send,
                    429,
                    "rate-limited",
                    "Too many requests with this API key; retry after the Retry-After delay.",
                    math.ceil(wait),
                )
                return
        is_upload = scope["method"] == "POST" and headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        tenant = self.settings.api_keys.get(hashlib.sha256(key).hexdigest()) if key and is_upload else None
        if tenant is not None:
            if self.uploads.get(tenant, 0) >= self.settings.max_uploads_per_tenant:
                await _send_problem(
                    send,
                    429,
                    "too-many-uploads",
                    f"Your key already has "
                    f"{self.settings.max_uploads_per_tenant} uploads in progress; retry when one ends.",
                    5,
                )
                return
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and self.upload_bytes + int(declared) > self.settings.max_temp_bytes:
                await _send_problem(send, 503, "temporary-disk-full", _DISK_FULL, 30)
                return
            self.uploads[tenant] = self.uploads.get(tenant, 0) + 1
        try:
            await self._guarded(scope, receive, send, is_upload and tenant is not None)
        finally:
            if tenant is not None:
                self.uploads[tenant] -= 1
                if not self.uploads[tenant]:
                    del self.uploads[tenant]

    async def _guarded(self, scope, receive, send, counts_bytes: bool) -> None:
        body_done = False
        abort: _Abort | None = None
        response_started = False
        counted = 0

        async def guarded_receive():
            nonlocal body_done, abort, counted
            if abort is not None:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout_s)
            except TimeoutError:
                abort = _Abort(
                    408,
                    "request-timeout",
                    f"The request body stopped arriving for "
                    f"{self.settings.body_timeout_s:g} s (or is shorter than its Content-Length).",
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                if counts_bytes:
                    size = len(message.get("body", b""))
                    if self.upload_bytes + size > self.settings.max_temp_bytes:
                        abort = _Abort(503, "temporary-disk-full", _DISK_FULL, 30)
                        return {"type": "http.disconnect"}
                    self.upload_bytes += size
                    counted += size
            return message

        async def guarded_send(message) -> None:
            nonlocal response_started
            if abort is not None:
                if not response_started:
                    response_started = True
                    await _send_problem(send, abort.status, abort.slug, abort.detail, abort.retry_after)
                return  # the app's own answer to the "disconnect" is replaced by the problem
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
            if abort is not None and not response_started:
                await _send_problem(send, abort.status, abort.slug, abort.detail, abort.retry_after)
        finally:
            self.upload_bytes -= counted


_DISK_FULL = (
    "The server's temporary upload space (SHEARS_MAX_TEMP_BYTES) is full with other uploads; "
    "retry after the Retry-After delay."
)


async def _send_problem(send, status: int, slug: str, detail: str, retry_after: int | None = None) -> None:
    body = _problem_body(status, slug, detail)
    headers = [(b"content-type", PROBLEM_JSON), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status in (408, 503):
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def uvicorn_options(settings: Settings) -> dict:
    """Keyword arguments of ``uvicorn.run``/``uvicorn.Config`` that apply these limits."""
    return {
        "http": GuardedHttpToolsProtocol.bound_to(settings),
        "timeout_keep_alive": settings.keep_alive_s,
    }
