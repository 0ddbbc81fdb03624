"""Webhook delivery against a real HTTP receiver on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.core.webhooks import CallbackRefused, deliver, verify


class _Receiver:
    """A real HTTP server on loopback that records requests and answers with ``status``."""

    def __init__(self, status: int, location: str | None = None) -> None:
        self.hits: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.hits.append((dict(self.headers), body))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_delivery_does_not_follow_a_redirect_to_an_internal_address() -> None:
    internal = _Receiver(200)
    redirector = _Receiver(307, location=internal.url)
    try:
        payload = {"id": "job_x", "status": "succeeded"}
        delivered = deliver(redirector.url, payload, "secret", allow_private=True, attempts=2, backoff_s=0.01)
        assert delivered is False
        assert len(redirector.hits) == 1  # a 3xx is final: no retry storm, no follow
        assert internal.hits == []
        headers, body = redirector.hits[0]
        assert verify("secret", headers["Shears-Webhook-Id"], headers["Shears-Signature"], body)
        # without the operator's opt-in, a loopback receiver is not even contacted
        with pytest.raises(CallbackRefused):
            deliver(internal.url, payload, "secret", allow_private=False, attempts=1)
        assert internal.hits == []
    finally:
        internal.close()
        redirector.close()
