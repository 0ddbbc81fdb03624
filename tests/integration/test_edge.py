"""Limits at the edge, against a real uvicorn with Shears' protocol (raw sockets on loopback):
no client can hold the API's memory, file descriptors, upload slots or temporary disk.

Every test starts its own API with small limits and waits by polling with generous deadlines;
the connection test opens a bounded number of sockets (60)."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.deps import hash_key
from service.core.config import Settings
from tests import servers
from tests.factories import npz_bytes

KEYS = {"alpha": "edge-key-alpha-0123456789", "beta": "edge-key-beta-0123456789"}
LONG = 60.0  # seconds: a generous deadline for anything that should take milliseconds


@pytest.fixture
def start(tmp_path: Path, server_logs: Path) -> Iterator:
    """Start a real API (uvicorn + GuardedHttpToolsProtocol) with some limits overridden."""
    started: list[servers.Process] = []

    def run(**limits) -> tuple[str, int, servers.Process]:
        settings = Settings(data_dir=tmp_path, api_keys={hash_key(k): t for t, k in KEYS.items()}, **limits)
        proc, base = servers.start_api(server_logs, settings, name=f"edge-api-{len(started)}")
        started.append(proc)
        return base, int(base.rsplit(":", 1)[1]), proc

    yield run
    for proc in started:
        proc.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=LONG)
    sock.settimeout(LONG)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def test_a_huge_request_header_gets_431_and_the_connection_is_closed(start) -> None:
    base, port, _ = start()
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Huge: ")
        with contextlib.suppress(OSError):  # the server closes while we are still sending
            for _ in range(64):  # at most 16 MiB
                sock.sendall(b"a" * (256 * 1024))
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"headers-too-large" in answer
    assert httpx.get(f"{base}/healthz", timeout=LONG).status_code == 200


def test_a_request_header_over_the_limit_that_arrives_whole_in_one_read_gets_431_too(start) -> None:
    base, port, _ = start(max_header_bytes=4096)  # the whole 8 KiB header block fits in one read
    with _connect(port) as sock:
        with contextlib.suppress(OSError):  # the server may close before it has read everything
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Huge: " + b"a" * (8 * 1024) + b"\r\n\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"headers-too-large" in answer
    # a request with small headers and a body in the same write is not counted as headers
    body = b"x" * (64 * 1024)
    with _connect(port) as sock:
        sock.sendall(
            b"POST /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        answer = _read_all(sock)
    assert not answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(f"{base}/healthz", timeout=LONG).status_code == 200


def test_headers_that_never_complete_get_408_and_the_connection_is_closed(start) -> None:
    _, port, _ = start(header_timeout_s=1.0)
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")  # the blank line never comes
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"request-timeout" in answer


def _post_partial_json(port: int, declared: int, sent: bytes) -> socket.socket:
    sock = _connect(port)
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {KEYS['alpha']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def test_a_body_shorter_than_its_content_length_gets_408_instead_of_a_wait_forever(start) -> None:
    _, port, api = start(body_timeout_s=1.0)
    with _post_partial_json(port, 1000, b'{"model_id": "mdl_') as sock:
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"application/problem+json" in answer and b"request-timeout" in answer
    assert "Traceback" not in api.log_path.read_text()


def _requests_seen(base: str, method: str, route: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=LONG).text
    pattern = rf'shears_http_request_seconds_count{{method="{method}",route="{route}",status="(\d+)"}} (\S+)'
    return {status: float(count) for status, count in re.findall(pattern, text)}


def test_a_client_that_disconnects_mid_json_body_leaves_no_traceback(start) -> None:
    base, port, api = start()
    sock = _post_partial_json(port, 1000, b'{"model_id": "mdl_')
    sock.close()
    servers.wait_until(lambda: _requests_seen(base, "POST", "/v1/jobs"), LONG, "the API finishing the request")
    assert _requests_seen(base, "POST", "/v1/jobs") == {"400": 1.0}  # not 500: handled, not crashed
    log = api.log_path.read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log


def test_connections_over_the_cap_are_refused_at_once_and_service_resumes_when_they_close(start) -> None:
    base, port, api = start(max_connections=20, header_timeout_s=600.0)
    idle = [_connect(port) for _ in range(60)]  # bounded: 60 sockets on loopback
    try:
        refused = []
        for sock in idle:
            sock.settimeout(0.5)  # an accepted idle connection sends nothing; a refused one answers at once
            try:
                refused.append(sock.recv(4096).startswith(b"HTTP/1.1 503 "))
            except TimeoutError:
                refused.append(False)
        assert sum(refused) >= 40, sum(refused)
        assert sum(not r for r in refused) <= 20
        open_fds = len(list(Path(f"/proc/{api.pid}/fd").iterdir()))
    finally:
        for sock in idle:
            sock.close()
    servers.wait_until(lambda: httpx.get(f"{base}/healthz", timeout=LONG).status_code == 200, LONG, "the API")
    assert open_fds < 20 + 60  # the refused sockets were closed, not held


def test_the_request_rate_per_key_is_limited_with_429_and_retry_after(start) -> None:
    base, _, _ = start(rate_limit_per_s=0.01, rate_limit_burst=3)
    answers = [httpx.get(f"{base}/v1/jobs", headers=_auth("alpha"), timeout=LONG) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    limited = answers[-1]
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["type"].endswith("/rate-limited")
    assert int(limited.headers["retry-after"]) >= 1
    assert httpx.get(f"{base}/v1/jobs", headers=_auth("beta"), timeout=LONG).status_code == 200  # its own bucket


def _open_slow_upload(port: int, tenant: str) -> socket.socket:
    sock = _connect(port)
    head = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {KEYS[tenant]}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\nPK'
    sock.sendall(head.encode() + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    return sock


def _upload(base: str, tenant: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/datasets", headers=_auth(tenant), files={"file": ("d.npz", npz_bytes())}, timeout=LONG
    )


def test_concurrent_uploads_per_tenant_are_capped_with_429(start) -> None:
    base, port, _ = start(max_uploads_per_tenant=1, body_timeout_s=600.0)
    slow = _open_slow_upload(port, "alpha")
    try:
        servers.wait_until(lambda: _upload(base, "alpha").status_code == 429, LONG, "alpha's second upload refused")
        refused = _upload(base, "alpha")
        assert refused.json()["type"].endswith("/too-many-uploads")
        assert "retry-after" in refused.headers
        assert _upload(base, "beta").status_code == 202  # another tenant is not affected
    finally:
        slow.close()
    servers.wait_until(lambda: _upload(base, "alpha").status_code == 202, LONG, "alpha uploading again")


def test_uploads_that_would_overfill_the_temporary_disk_get_503_and_nothing_is_left(start, tmp_path: Path) -> None:
    base, _, _ = start(max_temp_bytes=1 << 20)
    body = b"x" * (2 << 20)
    response = httpx.post(f"{base}/v1/datasets", headers=_auth("alpha"), files={"file": ("d.npz", body)}, timeout=LONG)
    assert response.status_code == 503
    assert response.json()["type"].endswith("/temporary-disk-full")
    assert int(response.headers["retry-after"]) >= 1
    assert list((tmp_path / "tmp").glob("upload-*")) == []
    assert _upload(base, "alpha").status_code == 202  # a small upload still fits


def test_the_limits_have_safe_defaults() -> None:
    defaults = Settings()
    assert defaults.max_header_bytes <= 64 * 1024 and defaults.header_timeout_s <= 30
    assert defaults.body_timeout_s <= 60 and defaults.max_connections <= 4096
    assert defaults.max_uploads_per_tenant <= 8 and defaults.rate_limit_per_s <= 100
    assert defaults.max_temp_bytes <= 16 << 30
