.PHONY: install run test openapi

install:
	bash scripts/bootstrap.sh

## Install everything, then run the embedded service (API + one worker) on 127.0.0.1:8000.
run: install
	.venv/bin/shears up

## Install everything, then run the whole test suite (unit + integration on real servers).
test: install
	.venv/bin/python -m pytest

openapi: install
	.venv/bin/shears openapi > openapi.yaml
