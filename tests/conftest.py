"""Fixtures: a real PostgreSQL for the session, the real app on a real port, real clients."""

import asyncio
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import aiopg
import pytest

from service.app import create_app
from service.config import Config
from service.db.migrations import apply_migrations

from .actors import JWT_SECRET, Actor


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """TEST_DATABASE_URL when given, else a throwaway embedded PostgreSQL; migrated once."""
    url = os.environ.get("TEST_DATABASE_URL")
    server = None
    if not url:
        from service.dev.embedded_db import start_embedded_postgres

        # Under pytest's temporary directory, which pytest prunes (the server deletes only its pgdata).
        server = start_embedded_postgres(tmp_path_factory.mktemp("postgres"), throwaway=True)
        url = server.get_uri()
    asyncio.run(apply_migrations(url))
    yield url
    if server is not None:
        server.cleanup()


CHANGE_SOURCES = ("notify", "wal")


def pytest_generate_tests(metafunc):
    """Tests of a module marked `both_change_sources` run once per change source."""
    marked = metafunc.definition.get_closest_marker("both_change_sources")
    if marked and "change_source" in metafunc.fixturenames:
        # Module scope: a module's shared servers are started once per source, not per test.
        metafunc.parametrize("change_source", CHANGE_SOURCES, scope="module")


@pytest.fixture
def change_source() -> str:
    """How the test's app hears of changes; both, in the modules marked `both_change_sources`."""
    return "notify"


@pytest.fixture
def config(database_url, change_source) -> Config:
    return Config(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        change_source=change_source,
        # Long enough that a push test passes through the change source, not the reconcile: tests
        # of the reconcile ask for a shorter one.
        reconcile_interval_seconds=30.0,
        listener_ping_seconds=1.0,
        listener_backoff_min_seconds=0.05,
        listener_backoff_max_seconds=0.5,
        ws_send_timeout_seconds=2.0,
    )


@pytest.fixture
async def client(client_with):
    return await client_with()


@pytest.fixture
def client_with(aiohttp_client, config):
    """`await client_with(setting=value, ...)`: a client of an app of its own, whose configuration
    differs from the test configuration in those settings only."""
    async def make(**changes):
        return await aiohttp_client(create_app(dataclasses.replace(config, **changes)))
    return make


@pytest.fixture
def user(client) -> Actor:
    return Actor(client, "user")


@pytest.fixture
def other_user(client) -> Actor:
    return Actor(client, "user")


@pytest.fixture
def worker(client) -> Actor:
    return Actor(client, "worker")


@pytest.fixture
async def sql(database_url):
    """A plain SQL connection, as a worker that bypasses the API would use."""
    async with aiopg.connect(database_url, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            yield cur


CLIENT_PACKAGE = Path(__file__).resolve().parent.parent / "client"


@pytest.fixture(scope="session")
def client_package(tmp_path_factory) -> Path:
    """client/, the npm package folder, copied under the test run's basetemp with its dev
    dependencies (typescript, vue: versions pinned in its package.json) installed from the npm
    registry, so the checkout gets no node_modules. The client tests check and serve this copy."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("the client package tests need Node.js and npm (Debian: apt-get install nodejs npm)",
                    pytrace=False)
    folder = tmp_path_factory.mktemp("client-package")
    shutil.copytree(CLIENT_PACKAGE, folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("node_modules", "package-lock.json"))
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "npm_config_update_notifier": "false"})
    assert installed.returncode == 0, f"npm install failed: {installed.stderr[-3000:]}"
    return folder
