"""GuardedHttpToolsProtocol's receive buffer, on the protocol object itself: a transport
that records pause/resume, bytes fed by hand, an ASGI app that reads (or not) the body."""

from __future__ import annotations

import asyncio
from pathlib import Path

from uvicorn.config import Config
from uvicorn.server import ServerState

from service.core.config import Settings
from service.edge import GuardedHttpToolsProtocol

KIB = 1024


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.closing = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data) -> None:
        pass

    def close(self) -> None:
        self.closing = True


def _feed(tmp_path: Path, reads_body: bool, pieces: list[int]) -> list[bool]:
    """Send a POST whose body arrives in ``pieces`` (bytes each) without letting the app run
    between them; return whether reading was paused after each piece."""

    async def scenario() -> list[bool]:
        started = asyncio.Event()

        async def app(scope, receive, send) -> None:
            if reads_body:
                await receive()  # takes what has arrived (nothing yet), then stops reading
            started.set()
            await asyncio.Event().wait()  # never answers while the test runs

        settings = Settings(data_dir=tmp_path, receive_buffer_bytes=1024 * KIB)
        config = Config(app=app, lifespan="off")
        protocol = GuardedHttpToolsProtocol.bound_to(settings)(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        total = sum(pieces) + 10  # the first 10 bytes below
        protocol.data_received(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n".encode())
        first = b"x" * 10
        protocol.data_received(first)  # the body has begun: the app's first receive returns it
        await asyncio.wait_for(started.wait(), 10)
        paused = []
        for size in pieces:
            protocol.data_received(b"x" * size)
            paused.append(transport.paused)
        protocol.connection_lost(None)
        return paused

    return asyncio.run(scenario())


def test_a_body_the_app_reads_is_buffered_up_to_receive_buffer_bytes_before_reading_pauses(tmp_path) -> None:
    # uvicorn alone pauses past 64 KiB; here 600 KiB wait unread, 1.2 MiB pause the socket
    assert _feed(tmp_path, reads_body=True, pieces=[600 * KIB, 600 * KIB]) == [False, True]


def test_a_body_no_route_reads_pauses_reading_past_uvicorns_64_kib(tmp_path) -> None:
    assert _feed(tmp_path, reads_body=False, pieces=[32 * KIB, 64 * KIB]) == [False, True]
