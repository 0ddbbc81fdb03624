"""The ``shears`` command line.

    shears up                      run the embedded service (API + one worker), no servers needed
    shears submit MODEL --dataset D --spec job.yaml --wait --download out/   (D: file, s3:// URI, ds_ id, builtin)
    shears status JOB | cancel JOB | download JOB out/
    shears prune MODEL --dataset D --spec job.yaml --out DIR     (the pipeline locally, no server)
    shears hash-key KEY            the digest to put in SHEARS_API_KEYS
    shears openapi                 the generated OpenAPI YAML

``submit`` exits 0 only when the job succeeded and its acceptance gate passed; 1 when the job
failed or was cancelled; 2 when it succeeded but the gate failed; 3 on a request error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

from service.core.children import Supervisor
from service.core.config import Settings

EXIT_OK, EXIT_JOB_FAILED, EXIT_GATE_FAILED, EXIT_REQUEST_FAILED = 0, 1, 2, 3


def _worker_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--concurrency",
        str(settings.worker_concurrency),
        "--queues",
        settings.task_queue,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def _embedded_api_key(settings: Settings) -> str | None:
    """With no keys configured, a random key kept in the data dir (mode 0600) for tenant
    ``default``; returns it so ``up`` can print it."""
    if settings.api_keys:
        return None
    path = settings.data_dir / "api-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def cmd_up(args: argparse.Namespace) -> int:
    """Run the API and one Celery worker subprocess on the embedded defaults."""
    import uvicorn

    from service.api.deps import hash_key
    from service.edge import uvicorn_options
    from service.main import create_app

    overrides: dict = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.data_dir:
        overrides["data_dir"] = Path(args.data_dir)
    settings = Settings(**overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = _embedded_api_key(settings)
    if key:
        settings = settings.model_copy(update={"api_keys": {hash_key(key): "default"}})
    log_path = settings.data_dir / "worker.log"
    with open(log_path, "ab") as worker_log:
        env = {**os.environ, **settings.as_env()}
        worker = Supervisor(
            "worker",
            _worker_command(settings),
            env,
            worker_log,
            max_backoff_s=settings.worker_restart_max_backoff_s,
            say=lambda line: print(line, flush=True),
        )
        worker.start()
        base = f"http://{settings.host}:{settings.port}"
        print(f"Shears listening on {base} (data in {settings.data_dir})", flush=True)
        print(f"  readiness: curl {base}/readyz", flush=True)
        if key:
            print(f"  authenticate: export SHEARS_URL={base} SHEARS_API_KEY={key}", flush=True)
            print('  then: curl -H "Authorization: Bearer $SHEARS_API_KEY" $SHEARS_URL/v1/jobs', flush=True)
        print(f"  worker pid {worker.process.pid}, log {log_path} (restarted if it dies)", flush=True)
        try:
            uvicorn.run(
                create_app(settings),
                host=settings.host,
                port=settings.port,
                log_level="info",
                **uvicorn_options(settings),
            )
        finally:
            worker.stop()
    return 0


class ApiError(Exception):
    pass


class Client:
    """A small HTTP client of the Shears API (httpx)."""

    def __init__(self, url: str, key: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def _check(self, response):
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = f"{body.get('title')}: {body.get('detail')}"
                if body.get("errors"):
                    detail += " " + json.dumps(body["errors"])
            except ValueError:
                detail = response.text[:500]
            raise ApiError(f"HTTP {response.status_code} {detail}")
        return response

    def upload(self, resource: str, path: Path, **fields: str) -> dict:
        with open(path, "rb") as stream:
            files = {"file": (path.name, stream, "application/octet-stream")}
            return self._check(self.http.post(f"/v1/{resource}", files=files, data=fields)).json()

    def upload_job(self, spec: dict, model: Path, dataset: Path | None, headers: dict) -> dict:
        """POST /v1/jobs/upload: the spec and the files in one multipart request."""
        with open(model, "rb") as model_stream:
            files = {"model": (model.name, model_stream, "application/octet-stream")}
            if dataset is None:
                response = self.http.post(
                    "/v1/jobs/upload", files=files, data={"spec": json.dumps(spec)}, headers=headers
                )
                return self._check(response).json()
            with open(dataset, "rb") as dataset_stream:
                files["dataset"] = (dataset.name, dataset_stream, "application/octet-stream")
                response = self.http.post(
                    "/v1/jobs/upload", files=files, data={"spec": json.dumps(spec)}, headers=headers
                )
                return self._check(response).json()

    def get(self, path: str) -> dict:
        return self._check(self.http.get(path)).json()

    def post(self, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
        return self._check(self.http.post(path, json=body, headers=headers)).json()

    def download(self, path: str, target: Path) -> None:
        with self.http.stream("GET", path, follow_redirects=True) as response:
            self._check(response)
            with open(target, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)


def _client(args: argparse.Namespace) -> Client:
    from service.core.config import ClientSettings

    env = ClientSettings()
    url, key = args.url or env.url, args.api_key or env.api_key
    if not key:
        raise ApiError("no API key: pass --api-key or set SHEARS_API_KEY (printed by `shears up`)")
    return Client(url, key)


def _load_spec(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def _wait_ready(client: Client, resource: str, item: dict) -> dict:
    while item["status"] == "validating":
        time.sleep(1)  # polling interval of a remote status
        item = client.get(f"/v1/{resource}/{item['id']}")
    if item["status"] != "ready":
        raise ApiError(f"{resource[:-1]} {item['id']} is invalid: {item['error']['message']}")
    return item


def _progress_line(job: dict) -> str:
    progress = job.get("progress") or {}
    epoch = ""
    if progress.get("epoch") is not None:
        epoch = f" epoch {progress['epoch']}" + (f"/{progress['epochs']}" if progress.get("epochs") else "")
    percent = progress.get("percent")
    bar = ""
    if percent is not None:
        filled = int(percent / 5)
        bar = f" [{'#' * filled}{'.' * (20 - filled)}] {percent:5.1f}%"
    return f"{job['id']} {job['status']:<10} {job.get('stage') or '':<16}{epoch}{bar}"


def _wait_job(client: Client, job: dict, quiet: bool) -> dict:
    while job["status"] not in {"succeeded", "failed", "cancelled"}:
        if not quiet:
            print("\r" + _progress_line(job).ljust(100), end="", file=sys.stderr, flush=True)
        time.sleep(1)  # polling interval of a remote status
        job = client.get(f"/v1/jobs/{job['id']}")
    if not quiet:
        print("\r" + _progress_line(job).ljust(100), file=sys.stderr, flush=True)
    return job


def _download_all(client: Client, job: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    names = [artifact["name"] for artifact in client.get(f"/v1/jobs/{job['id']}/artifacts")]
    for name in names:
        client.download(f"/v1/jobs/{job['id']}/artifacts/{name}", out / name)
    return names


def _exit_code(job: dict) -> int:
    if job["status"] != "succeeded":
        return EXIT_JOB_FAILED
    acceptance = (job.get("result") or {}).get("acceptance") or {}
    return EXIT_OK if acceptance.get("passed", True) else EXIT_GATE_FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    uploaded = args.model.startswith("mdl_")
    if not uploaded and not Path(args.model).is_file():
        raise ApiError(f"{args.model}: no such file; give a model file or the id mdl_... of an uploaded model")
    client = _client(args)
    spec = _load_spec(args.spec)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    dataset_is_file = args.dataset and not args.dataset.startswith(("s3://", "ds_"))
    if headers and not uploaded and not args.architecture and (dataset_is_file or not args.dataset):
        # one request (POST /v1/jobs/upload): a retry with the same key sends the same files and
        # spec, so it replays the job; separate uploads would get new ids and a different body
        job = _submit_in_one_request(client, spec, Path(args.model), args.dataset, headers)
    else:
        job = _submit_after_uploads(client, spec, args, headers)
    if not args.json:
        print(f"job {job['id']} {job['status']}", file=sys.stderr)
    if args.wait or args.download:
        job = _wait_job(client, job, args.json)
        if args.download and job["status"] == "succeeded":
            _download_all(client, job, Path(args.download))
    return _finish(job, args, waited=args.wait or bool(args.download))


def _submit_in_one_request(client: Client, spec: dict, model: Path, dataset: str | None, headers: dict) -> dict:
    if dataset in {"mnist1d", "digits"}:
        spec["dataset"] = {"builtin": dataset}
        return client.upload_job(spec, model, None, headers)
    return client.upload_job(spec, model, Path(dataset) if dataset else None, headers)


def _submit_after_uploads(client: Client, spec: dict, args: argparse.Namespace, headers: dict | None) -> dict:
    if args.model.startswith("mdl_"):  # uploaded before
        model = client.get(f"/v1/models/{args.model}")
    else:
        model = client.upload(
            "models", Path(args.model), **({"architecture": args.architecture} if args.architecture else {})
        )
    spec["model_id"] = _wait_ready(client, "models", model)["id"]
    if args.dataset in {"mnist1d", "digits"}:
        spec["dataset"] = {"builtin": args.dataset}
    elif args.dataset.startswith("s3://"):  # registered by reference: the data stay in the bucket
        spec["dataset_id"] = _wait_ready(client, "datasets", client.post("/v1/datasets", {"uri": args.dataset}))["id"]
    elif args.dataset.startswith("ds_"):  # registered or uploaded before
        spec["dataset_id"] = _wait_ready(client, "datasets", client.get(f"/v1/datasets/{args.dataset}"))["id"]
    elif args.dataset:
        spec["dataset_id"] = _wait_ready(client, "datasets", client.upload("datasets", Path(args.dataset)))["id"]
    return client.post("/v1/jobs", spec, headers=headers)


def _finish(job: dict, args: argparse.Namespace, waited: bool) -> int:
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        acceptance = (job.get("result") or {}).get("acceptance")
        if job.get("error"):
            print(f"error: {job['error']['code']}: {job['error']['message']}", file=sys.stderr)
        if acceptance:
            verdict = "passed" if acceptance.get("passed") else "FAILED"
            print(f"acceptance gate {verdict}: {json.dumps(acceptance)}", file=sys.stderr)
    return _exit_code(job) if waited else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).get(f"/v1/jobs/{args.job}")
    print(json.dumps(job, indent=2) if args.json else _progress_line(job))
    return _exit_code(job) if job["status"] in {"succeeded", "failed", "cancelled"} else EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).post(f"/v1/jobs/{args.job}/cancel")
    print(json.dumps(job, indent=2) if args.json else _progress_line(job))
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.get(f"/v1/jobs/{args.job}")
    names = _download_all(client, job, Path(args.out))
    print(json.dumps(names) if args.json else "\n".join(str(Path(args.out) / n) for n in names))
    return _exit_code(job)


def cmd_prune(args: argparse.Namespace) -> int:
    """Run the pipeline locally (no server), with progress bars."""
    from service.core.spec import JobSpec
    from worker.local import prune_locally

    raw = _load_spec(args.spec)
    builtin = args.dataset if args.dataset in {"mnist1d", "digits"} else None
    raw["dataset"] = {"builtin": builtin} if builtin else None
    raw.setdefault("dataset_id", None)
    if not builtin:
        raw["dataset_id"] = "ds_" + "0" * 24  # a local file stands in for an uploaded dataset
    spec = JobSpec.model_validate(raw)
    summary = prune_locally(
        Path(args.model),
        None if builtin else Path(args.dataset),
        spec,
        Path(args.out),
        architecture=args.architecture,
        device=args.device,
    )
    print(json.dumps(summary, indent=2) if args.json else f"artifacts in {args.out}: {', '.join(summary['files'])}")
    acceptance = summary.get("acceptance") or {}
    return EXIT_OK if acceptance.get("passed", True) else EXIT_GATE_FAILED


def cmd_hash_key(args: argparse.Namespace) -> int:
    from service.api.deps import hash_key

    print(hash_key(args.key))
    return EXIT_OK


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the OpenAPI document the app generates, as YAML."""
    from service.openapi import render_openapi

    sys.stdout.write(render_openapi())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shears", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def remote(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_)
        sub.add_argument("--url", help="API base URL (default $SHEARS_URL or http://127.0.0.1:8000)")
        sub.add_argument("--api-key", help="API key (default $SHEARS_API_KEY)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    up = commands.add_parser("up", help="run the embedded service (API + one worker)")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--data-dir")
    up.set_defaults(func=cmd_up)

    submit = remote("submit", "upload a model (+ dataset), create a job, optionally wait and download")
    submit.add_argument("model", help="a model file, or the id mdl_... of an uploaded model")
    submit.add_argument(
        "--dataset",
        required=True,
        help="a .npz/.safetensors file, a .zip/.tar of images, mnist1d / digits, s3://bucket/prefix/ "
        "(registered by reference, see SHEARS_DATASET_REFERENCE_PREFIXES) or the id ds_... of a dataset",
    )
    submit.add_argument("--spec", help="job spec YAML/JSON (model and dataset ids are filled in)")
    submit.add_argument("--architecture", help="zoo architecture of a safetensors model")
    submit.add_argument("--wait", action="store_true")
    submit.add_argument("--download", metavar="DIR")
    submit.add_argument(
        "--idempotency-key",
        help="a retry with the same key returns the same job (the files and spec go in one request; "
        "with an s3:// or ds_ dataset or --architecture the model is uploaded first and a retry gets a 422)",
    )
    submit.set_defaults(func=cmd_submit)

    for name, func, help_ in (("status", cmd_status, "show a job"), ("cancel", cmd_cancel, "cancel a job")):
        sub = remote(name, help_)
        sub.add_argument("job")
        sub.set_defaults(func=func)
    download = remote("download", "download a finished job's artifacts")
    download.add_argument("job")
    download.add_argument("out")
    download.set_defaults(func=cmd_download)

    prune = commands.add_parser("prune", help="run the pruning pipeline locally, no server")
    prune.add_argument("model")
    prune.add_argument(
        "--dataset", required=True, help="a .npz/.safetensors file, a .zip/.tar of images, or mnist1d / digits"
    )
    prune.add_argument("--spec")
    prune.add_argument("--out", required=True)
    prune.add_argument("--architecture")
    prune.add_argument("--device", default="auto")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(func=cmd_prune)

    hash_cmd = commands.add_parser("hash-key", help="print the digest of an API key for SHEARS_API_KEYS")
    hash_cmd.add_argument("key")
    hash_cmd.set_defaults(func=cmd_hash_key)
    openapi = commands.add_parser("openapi", help="print the generated OpenAPI YAML")
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ApiError as error:
        print(f"shears: {error}", file=sys.stderr)
        return EXIT_REQUEST_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
