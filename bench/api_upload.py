"""Streamed uploads: a large model upload (a sparse file of random-looking ONNX bytes is not
needed: the size check and the sniffing read the header, so a valid ONNX header followed by
a large raw tensor payload is used) through POST /v1/models, with the API's VmRSS sampled
every 50 ms, against a plain ``cp`` of the same file on the same disk.

    .venv/bin/python bench/api_upload.py --size-mib 1024 --storage file s3 --repeats 3

The client is ``curl -F file=@big.onnx`` (the README's command; it streams the file from
disk), or with ``--client httpx`` a Python client streaming a generator of 1 MiB chunks
(which costs more CPU than the server on this machine). The API runs as ``shears api`` runs
it (uvicorn with ``service.edge:GuardedHttpToolsProtocol``). ``sha256_ok`` checks the
reported sha256 against the file's. Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import cpu_seconds, deployment, header, loadavg, rss_kib, write_json  # noqa: E402


def make_big_onnx(path: Path, size_mib: int) -> Path:
    """A valid ONNX model (Identity) whose one initializer holds ``size_mib`` MiB of raw bytes."""
    import numpy as np
    from onnx import TensorProto, helper

    count = (size_mib << 20) // 4
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[count])
    rng = np.random.default_rng(0)
    block = rng.standard_normal(1 << 18).astype(np.float32).tobytes()  # 1 MiB of random floats, repeated
    tensor.raw_data = block * (count * 4 // len(block)) + block[: (count * 4) % len(block)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with open(path, "wb") as out:
        out.write(model.SerializeToString())
    return path


def multipart_stream(path: Path, boundary: str, chunk: int = 1 << 20):
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with open(path, "rb") as stream:
        while data := stream.read(chunk):
            yield data
    yield f"\r\n--{boundary}--\r\n".encode()


def _post_httpx(base: str, headers: dict, path: Path) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    length = len(next(multipart_stream(path, boundary))) + path.stat().st_size + len(f"\r\n--{boundary}--\r\n")
    response = httpx.post(
        f"{base}/v1/models",
        content=multipart_stream(path, boundary),
        timeout=600,
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)},
    )
    return response.status_code, response.json()


def _post_curl(base: str, headers: dict, path: Path) -> tuple[int, dict]:
    """``curl -F file=@PATH``: what the README shows; curl streams the file from disk."""
    argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-F", f"file=@{path}", f"{base}/v1/models"]
    for name, value in headers.items():
        argv[1:1] = ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    body, status = out.rsplit("\n", 1)
    return int(status), json.loads(body)


CLIENTS = {"curl": _post_curl, "httpx": _post_httpx}


def upload(base: str, headers: dict, path: Path, pid: int, client: str = "curl") -> dict:
    size = path.stat().st_size
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_kib(pid))
            time.sleep(0.05)

    baseline = rss_kib(pid)
    cpu_before = cpu_seconds(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    status, body = CLIENTS[client](base, headers, path)
    seconds = time.perf_counter() - start
    api_cpu = cpu_seconds(pid) - cpu_before
    done.set()
    sampler.join()
    return {
        "client": client,
        "status": status,
        "sha256_ok": body.get("sha256") == sha256_of(path),
        "model_status": body.get("status"),
        "size_mib": round(size / 2**20, 1),
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "api_cpu_s": round(api_cpu, 2),
        "api_rss_before_mib": round(baseline / 1024, 1),
        "api_rss_peak_mib": round(max(samples) / 1024, 1),
        "api_rss_growth_mib": round((max(samples) - baseline) / 1024, 1),
        "rss_samples": len(samples),
        "load": loadavg(),
    }


def sha256_of(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def plain_copy(path: Path, target_dir: Path) -> dict:
    target = target_dir / "copy.bin"
    subprocess.run(["sync"], check=False)
    start = time.perf_counter()
    subprocess.run(["cp", str(path), str(target)], check=True)
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    target.unlink()
    return {"seconds": round(seconds, 2), "mb_per_s": round(size / 1e6 / seconds, 1), "load": loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--storage", nargs="+", default=["file", "s3"], choices=["file", "s3"])
    parser.add_argument(
        "--uvicorn-args",
        default="--no-access-log --http service.edge:GuardedHttpToolsProtocol",
        help="as `shears api` runs it; add '--app-dir DIR' to run other code",
    )
    parser.add_argument("--client", choices=sorted(CLIENTS), default="curl", help="curl -F (default) or httpx")
    parser.add_argument("--repeats", type=int, default=1, help="cp and upload alternate this many times")
    parser.add_argument("--json")
    args = parser.parse_args()
    header(f"api_upload {args.size_mib} MiB")
    results: dict = {"size_mib": args.size_mib, "runs": []}
    with tempfile.TemporaryDirectory(prefix="shears-upload-", dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        path = make_big_onnx(Path(tmp) / "big.onnx", args.size_mib)
        results["file_bytes"] = path.stat().st_size
        for storage in args.storage:
            with deployment(
                database="sqlite", storage=storage, uvicorn_args=tuple(shlex.split(args.uvicorn_args))
            ) as dep:
                for _ in range(args.repeats):  # cp right before each upload: both see the same load
                    results["cp"] = plain_copy(path, Path(tmp))
                    row = {
                        "storage": storage,
                        "cp": results["cp"],
                        **upload(dep.base, dep.headers, path, dep.api.pid, args.client),
                    }
                    row["upload_over_cp_time"] = round(row["seconds"] / results["cp"]["seconds"], 2)
                    row["speed_vs_cp"] = round(results["cp"]["seconds"] / row["seconds"], 3)
                    results["runs"].append(row)
                    print(row, flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
