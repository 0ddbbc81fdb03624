"""The ``shears`` command line: ``up`` runs the embedded service; ``openapi`` prints the contract."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.core.config import Settings


def _worker_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--concurrency", str(settings.worker_concurrency), "--queues", settings.task_queue,
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def cmd_up(args: argparse.Namespace) -> int:
    """Run the API and one Celery worker subprocess on the embedded defaults."""
    import uvicorn

    from service.main import create_app

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.data_dir:
        overrides["data_dir"] = Path(args.data_dir)
    settings = Settings(**overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "worker.log"
    worker_log = open(log_path, "ab")
    worker = subprocess.Popen(
        _worker_command(settings), env={**os.environ, **settings.as_env()}, stdout=worker_log, stderr=worker_log
    )
    base = f"http://{settings.host}:{settings.port}"
    print(f"Shears listening on {base} (data in {settings.data_dir})", flush=True)
    print(f"  readiness: curl {base}/readyz", flush=True)
    print(f"  worker pid {worker.pid}, log {log_path}", flush=True)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI document the app generates, as YAML."""
    from service.openapi import render_openapi

    sys.stdout.write(render_openapi())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shears", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the embedded service (API + one worker)")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--data-dir")
    up.set_defaults(func=cmd_up)
    openapi = commands.add_parser("openapi", help="print the generated OpenAPI YAML")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
