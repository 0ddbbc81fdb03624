"""Completion webhooks: signed with HMAC-SHA256, never sent to internal addresses.

Signature header: ``Shears-Signature: t=<unix time>,v1=<hex hmac(secret, f"{id}.{t}.{body}")>``
where ``id`` is the ``Shears-Webhook-Id`` header (the job id plus its final status).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlparse


class CallbackRefused(ValueError):
    """The callback URL is not allowed; the message says why."""


def check_callback_url(url: str, allow_private: bool) -> None:
    """Refuse non-HTTP(S) URLs and hosts that resolve to loopback, link-local, private or
    reserved addresses (unless the operator allows them)."""
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise CallbackRefused("callback_url must be an absolute http:// or https:// URL")
    if parsed.username or parsed.password:
        raise CallbackRefused("callback_url must not carry credentials")
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise CallbackRefused(f"callback_url host {parsed.hostname!r} does not resolve") from error
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise CallbackRefused(
                f"callback_url resolves to the internal address {address}; use a public host "
                "(operators can allow internal ones with SHEARS_ALLOW_PRIVATE_CALLBACKS)"
            )


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    message = f"{webhook_id}.{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, webhook_id: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """Receiver side: check a ``Shears-Signature`` header (also used by the tests)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), sign(secret, webhook_id, timestamp, body))


def deliver(
    url: str,
    payload: dict,
    secret: str,
    allow_private: bool,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 10.0,
) -> bool:
    """POST ``payload`` with bounded retries and exponential backoff; redirects are not
    followed (a redirect could lead to an internal address). True when a 2xx came back."""
    import httpx

    body = json.dumps(payload, sort_keys=True).encode()
    webhook_id = f"{payload['id']}.{payload['status']}"
    for attempt in range(attempts):
        check_callback_url(url, allow_private)  # re-resolved on every try (DNS rebinding)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Shears-Webhook-Id": webhook_id,
            "Shears-Signature": f"t={timestamp},v1={sign(secret, webhook_id, timestamp, body)}",
        }
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False)
            if response.is_success:
                return True
            if 300 <= response.status_code < 500 and response.status_code not in {408, 429}:
                return False  # a redirect or a refusal is final: retrying changes nothing
        except httpx.HTTPError:
            pass
        if attempt + 1 < attempts:
            time.sleep(backoff_s * 2**attempt)  # backoff between retries of a remote call
    return False
