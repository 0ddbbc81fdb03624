"""Fixtures shared by the whole suite. Servers are real and start only when a test needs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.config import Settings
from tests import servers

SERVER_FIXTURES = {"redis_url", "s3_endpoint", "postgres_url", "celery_worker", "service_settings"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration, and tests using a real server, are ``integration``
    (select them with ``-m integration``, skip them with ``-m "not integration"``)."""
    for item in items:
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec and "postgresql" in callspec.id:
            uses_server = True
        if "integration" in Path(str(item.fspath)).parts or uses_server:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def announce(pytestconfig: pytest.Config):
    """Write a line to the terminal even while output is captured (servers starting, say)."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")

    def say(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[servers] {message}")

    return say


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def redis_url(server_logs: Path, announce) -> Iterator[str]:
    proc, url = servers.start_redis(server_logs)
    announce(f"redis-server pid {proc.pid} listening at {url}")
    yield url
    proc.stop()
    announce("redis-server stopped")


@pytest.fixture(scope="session")
def s3_endpoint(server_logs: Path, announce) -> Iterator[str]:
    proc, endpoint = servers.start_moto(server_logs)
    announce(f"moto S3 server pid {proc.pid} listening at {endpoint}")
    yield endpoint
    proc.stop()
    announce("moto S3 server stopped")


@pytest.fixture(scope="session")
def postgres_url(announce) -> Iterator[str]:
    servers.ensure_postgres()
    with servers.postgres_database() as url:
        announce(f"PostgreSQL database {url.rsplit('/', 1)[1]} created")
        yield url


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    servers.create_bucket(s3_endpoint, "shears-test")
    return "shears-test"


@pytest.fixture(scope="session")
def service_settings(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    s3_endpoint: str,
    s3_bucket: str,
    postgres_url: str,
) -> Settings:
    """Production-shaped settings: Redis broker, S3 storage on moto, PostgreSQL."""
    return Settings(
        data_dir=tmp_path_factory.mktemp("shears-data"),
        database_url=postgres_url,
        broker_url=redis_url,
        result_backend=redis_url,
        storage_uri=f"s3://{s3_bucket}/artifacts",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )


@pytest.fixture(scope="session")
def celery_worker(service_settings: Settings, server_logs: Path, announce) -> Iterator[servers.Process]:
    """One real ``celery worker`` process wired to Redis, moto's S3 and PostgreSQL."""
    proc = servers.start_celery_worker(server_logs, service_settings)
    announce(f"celery worker pid {proc.pid} consuming from {service_settings.broker_url}")
    yield proc
    proc.stop()
    announce("celery worker stopped")
