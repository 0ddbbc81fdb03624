"""What a streamed upload costs inside uvicorn, piece by piece (an experiment, not the API).

    .venv/bin/python bench/upload_receive.py --size-mib 1024 --modes discard hash write hash+write multipart \\
        --buffers 65536 1048576 --json bench/results/upload_receive.json

A bare ASGI app under uvicorn (httptools, uvloop: what ``auto`` picks) receives a 1 GiB body
sent by ``curl`` from a file and, per mode, drops it (``discard``: the server's receive path
alone), hashes it inline on the event loop (``hash``), writes it (``write``), hashes and
writes it in a worker thread per 4 MiB block (``hash+write``), or parses it as
multipart/form-data, hashing and writing the file part in that thread (``multipart``: what
POST /v1/models does). ``--buffers``: uvicorn's flow-control high-water mark (its own is
64 KiB; service.edge's ``receive_buffer_bytes`` sets Shears' to 1 MiB). Each mode is timed
next to a ``cp`` of the same file; the server's CPU seconds per request are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BLOCK = 4 << 20


async def app(scope, receive, send) -> None:
    """The experiment's ASGI app; the mode is the request path."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    from python_multipart.multipart import MultipartParser, parse_options_header

    mode = scope["path"].strip("/")
    cpu, start = time.process_time(), time.perf_counter()
    digest = hashlib.sha256()
    fd, path = tempfile.mkstemp(dir=os.environ.get("UPLOAD_RECEIVE_TMP"))
    out = os.fdopen(fd, "wb", buffering=0)

    def on_data(data: bytes, begin: int, end: int) -> None:
        view = memoryview(data)[begin:end]
        out.write(view)
        digest.update(view)

    _, options = parse_options_header(dict(scope["headers"]).get(b"content-type", b""))
    parser = MultipartParser(options[b"boundary"], {"on_part_data": on_data}) if mode == "multipart" else None

    def work(chunks: list[bytes]) -> None:
        for chunk in chunks:
            if parser is not None:
                parser.write(chunk)
            else:
                digest.update(chunk)
                out.write(chunk)

    loop = asyncio.get_running_loop()
    pending, chunks, gathered, size = None, [], 0, 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        size += len(body)
        if mode == "hash":
            digest.update(body)
        elif mode == "write":
            out.write(body)
        elif mode in ("hash+write", "multipart"):
            chunks.append(body)
            gathered += len(body)
            if gathered >= BLOCK or not message.get("more_body"):
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, work, chunks)
                chunks, gathered = [], 0
        if not message.get("more_body"):
            break
    if pending is not None:
        await pending
    out.close()
    os.unlink(path)
    line = f"{size} {time.perf_counter() - start:.3f} {time.process_time() - cpu:.3f}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(line)).encode())]}
    )
    await send({"type": "http.response.body", "body": line})


def serve(port: int, buffer: int) -> None:
    """uvicorn with ``buffer`` as its high-water mark (patched before it starts)."""
    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    httptools_impl.HIGH_WATER_LIMIT = buffer
    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=["discard", "hash", "write", "hash+write", "multipart"])
    parser.add_argument("--buffers", nargs="+", type=int, default=[65536, 1 << 20])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json")
    parser.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return
    from bench.common import header, loadavg, write_json
    from tests.servers import free_port, wait_until

    header(f"upload_receive {args.size_mib} MiB")
    rows = []
    with tempfile.TemporaryDirectory(prefix="shears-receive-") as tmp:
        source = Path(tmp) / "big.bin"
        with open(source, "wb") as stream:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                stream.write(block)
        for _ in range(args.repeats):
            for buffer in args.buffers:  # interleaved: every buffer sees every mode at about the same load
                port = free_port()
                server = subprocess.Popen(
                    [sys.executable, __file__, "--serve", str(port), str(buffer)],
                    env={**os.environ, "UPLOAD_RECEIVE_TMP": tmp},
                )
                try:
                    wait_until(lambda p=port: _answers(p), 60, "experiment server")
                    for mode in args.modes:
                        rows.append({"buffer": buffer, "mode": mode, **_one(source, port, mode), "load": loadavg()})
                        print(rows[-1], flush=True)
                finally:
                    server.terminate()
                    server.wait()
    write_json(args.json, {"size_mib": args.size_mib, "rows": rows})


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _one(source: Path, port: int, mode: str) -> dict:
    copy = source.with_suffix(".copy")
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(copy)], check=True)
    cp_s = time.perf_counter() - start
    copy.unlink()
    url = f"http://127.0.0.1:{port}/{mode}"
    send = ["-F", f"file=@{source}"] if mode == "multipart" else ["-T", str(source), "-X", "POST"]
    start = time.perf_counter()
    out = subprocess.run(["curl", "-sS", *send, url], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    size, server_s, server_cpu = out.split()
    return {
        "cp_s": round(cp_s, 3),
        "wall_s": round(wall, 3),
        "server_s": float(server_s),
        "server_cpu_s": float(server_cpu),
        "mb_per_s": round(int(size) / 1e6 / wall, 1),
        "speed_vs_cp": round(cp_s / wall, 3),
    }


if __name__ == "__main__":
    main()
