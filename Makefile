.PHONY: install run test lint test-deploy openapi corpus

install:
	bash scripts/bootstrap.sh

## Install everything, then run the embedded service (API + one worker) on 127.0.0.1:8000.
run: install
	.venv/bin/shears up

## Install everything, then run the whole test suite (unit + integration on real servers).
test: install lint
	.venv/bin/python -m pytest

## Lint and format check (ruff, configured in pyproject.toml).
lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

## The deployment check (root, ~20 min cold; .ci/run runs it): build the images, run jobs through the compose
## stack, docker-kill a worker mid-job and see the job resume on the other (deploy/check.py).
test-deploy: install
	.venv/bin/python deploy/check.py

openapi: install
	.venv/bin/shears openapi > openapi.yaml

## Prune every model of the ONNX corpus (corpus/manifest.json) end to end and print the table.
corpus:
	.venv/bin/python scripts/fetch-corpus.py
	.venv/bin/python -m worker.corpus
