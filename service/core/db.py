"""SQLAlchemy engine and sessions: SQLite embedded, PostgreSQL in production (same code)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from service.core.config import Settings


class Base(DeclarativeBase):
    """Declarative base of every table."""


def make_engine(settings: Settings) -> Engine:
    """An engine for the configured database; SQLite gets WAL and a busy timeout."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        in_memory = make_url(url).database in (None, "", ":memory:")  # a single-connection pool
        pool = (
            {}
            if in_memory
            else {"pool_size": settings.database_pool_size, "max_overflow": settings.database_max_overflow}
        )
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - driver hook
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=settings.database_pool_size, max_overflow=settings.database_max_overflow
    )


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


SCHEMA_LOCK = 0x5EA125  # PostgreSQL advisory lock id held while the schema is created


def create_schema(engine: Engine) -> None:
    """Create missing tables (idempotent). On PostgreSQL under an advisory lock: the API and
    the workers start together, and concurrent CREATE TABLEs collide on pg_type."""
    import service.core.models  # noqa: F401  (registers the tables on Base)

    if engine.dialect.name != "postgresql":
        with engine.begin() as connection:
            Base.metadata.create_all(connection)
            add_missing_columns(connection)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK})
        Base.metadata.create_all(connection)
        add_missing_columns(connection)


def add_missing_columns(connection) -> list[str]:
    """Add nullable columns that newer versions declare to tables an older version created
    (``datasets.source_uri``); ``create_all`` only creates missing tables. Returns what it added."""
    present = inspect(connection)
    added = []
    for table in Base.metadata.sorted_tables:
        if not present.has_table(table.name):
            continue
        have = {column["name"] for column in present.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or not column.nullable:
                continue
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
    return added


def check_database(engine: Engine) -> None:
    """Raise when the database cannot answer a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
