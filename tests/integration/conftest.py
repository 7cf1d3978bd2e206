"""Fixtures for tests against real databases: SQLite files and a PostgreSQL server.

Every test gets fresh databases from the factories below: a new SQLite file under
``tmp_path``, or a new PostgreSQL database ``callrouter_test_<random>`` created through
the server's ``postgres`` database and dropped afterwards, so tests never collide with
each other or with other users of a shared server.

PostgreSQL is found at ``$CALLROUTER_TEST_PG_URL`` (any database on the server; default:
``postgresql+psycopg://root@127.0.0.1:5432/postgres``, then the ``postgres`` user). When
it cannot be reached the test fails under CI (``CI=true``) and is skipped, loudly,
elsewhere.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from callrouter.tickets import TicketStore

from .servers import (
    PrivatePostgres,
    PrivateRedis,
    private_postgres_bindir,
    private_redis_binary,
)

BACKENDS = ("sqlite", "postgresql")

_DEFAULT_PG_URLS = (
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class FreshDatabase:
    backend: str  # "sqlite" | "postgresql"
    url: str
    name: str  # PostgreSQL database name, or the SQLite file path


class PostgresServer:
    """An AUTOCOMMIT connection to the server's ``postgres`` database, for DDL."""

    def __init__(self, admin: Engine) -> None:
        self.admin = admin

    def execute(self, sql: str, **params: Any) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(sql), params)

    def url_for(self, database: str) -> str:
        return self.admin.url.set(database=database).render_as_string(hide_password=False)

    def create_database(self) -> str:
        name = f"callrouter_test_{secrets.token_hex(6)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that failed half-way may have left connections open
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def block_connections(self, name: str) -> None:
        """A real outage for clients of ``name``: refuse new sessions, end current ones."""
        self.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = :name AND pid <> pg_backend_pid()", name=name)

    def allow_connections(self, name: str) -> None:
        self.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def _admin_candidates() -> list[URL]:
    configured = os.environ.get("CALLROUTER_TEST_PG_URL")
    raw = [configured] if configured else list(_DEFAULT_PG_URLS)
    return [make_url(u).set(database="postgres") for u in raw]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    errors: list[str] = []
    for url in _admin_candidates():
        engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True,
                               connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            engine.dispose()
            cause = getattr(exc, "orig", None) or exc
            first_line = (str(cause).splitlines() or [""])[0]
            errors.append(f"{url.render_as_string(hide_password=True)}: {first_line}")
            continue
        try:
            yield PostgresServer(engine)
        finally:
            engine.dispose()
        return
    reason = "PostgreSQL not reachable at " + "; ".join(errors)
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: PostgreSQL is required)", pytrace=False)
    pytest.skip(f"{reason} -- set CALLROUTER_TEST_PG_URL or start PostgreSQL; "
                "under CI=true this is a failure")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_database(request: pytest.FixtureRequest,
                  tmp_path: Path) -> Iterator[Callable[[str], FreshDatabase]]:
    """Factory: ``make_database(backend)`` -> a fresh, empty database, removed afterwards."""
    dropped: list[Callable[[], None]] = []

    def make(backend: str) -> FreshDatabase:
        if backend == "sqlite":
            path = tmp_path / f"db-{secrets.token_hex(4)}" / "tickets.sqlite3"
            return FreshDatabase("sqlite", f"sqlite:///{path}", str(path))
        if backend == "postgresql":
            server: PostgresServer = request.getfixturevalue("postgres_server")
            name = server.create_database()
            dropped.append(lambda: server.drop_database(name))
            return FreshDatabase("postgresql", server.url_for(name), name)
        raise ValueError(f"unknown backend {backend!r}")

    yield make
    for drop in reversed(dropped):
        drop()


@pytest.fixture
def make_store(make_database: Callable[[str], FreshDatabase]
               ) -> Iterator[Callable[..., tuple[TicketStore, FreshDatabase]]]:
    """Factory: ``make_store(backend, **options)`` -> (store with schema, its database).

    Stores are closed (engines disposed) before their databases are dropped.
    """
    stores: list[TicketStore] = []

    def make(backend: str, **options: Any) -> tuple[TicketStore, FreshDatabase]:
        database = make_database(backend)
        store = TicketStore(database.url, **options)
        stores.append(store)
        store.create_schema()
        return store, database

    yield make
    for store in reversed(stores):
        store.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test alone (outage tests kill and restart it)."""
    server = PrivateRedis(private_redis_binary())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test module alone (outage tests stop and start it)."""
    server = PrivatePostgres(private_postgres_bindir())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()
