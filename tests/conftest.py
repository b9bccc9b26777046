"""Fixtures: a real PostgreSQL for the session, the real app on a real port, real clients."""

import asyncio
import os
import tempfile
import uuid

import aiopg
import pytest

from service.app import create_app
from service.auth import issue_token
from service.config import Config
from service.migrations import apply_migrations

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"


@pytest.fixture(scope="session")
def database_url():
    """TEST_DATABASE_URL when given, else a throwaway embedded PostgreSQL; migrated once."""
    url = os.environ.get("TEST_DATABASE_URL")
    server = None
    if not url:
        from service.embedded_db import start_embedded_postgres

        server = start_embedded_postgres(tempfile.mkdtemp(prefix="aiagent-test-"), throwaway=True)
        url = server.get_uri()
    asyncio.run(apply_migrations(url))
    yield url
    if server is not None:
        server.cleanup()


@pytest.fixture
def config(database_url) -> Config:
    return Config(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        reconcile_interval_seconds=1.0,
        listener_ping_seconds=1.0,
        listener_backoff_min_seconds=0.05,
        listener_backoff_max_seconds=0.5,
        ws_send_timeout_seconds=2.0,
    )


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(create_app(config))


def token_for(sub: str, role: str = "user", ttl: float = 3600) -> str:
    return issue_token(JWT_SECRET, sub, role, ttl)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Actor:
    """A caller with its own token: each test gets fresh subjects, so tests never see each other."""

    def __init__(self, client, role: str = "user"):
        self.client = client
        self.sub = f"{role}-{uuid.uuid4().hex[:8]}"
        self.token = token_for(self.sub, role)
        self.headers = auth(self.token)

    async def request(self, method: str, path: str, **kwargs):
        response = await self.client.request(method, path, headers=self.headers, **kwargs)
        return response.status, await response.json()

    async def create_workflow(self, nodes=(("plan", "Plan"), ("act", "Act"))) -> dict:
        status, body = await self.request("POST", "/api/v1/workflows", json={
            "name": "research agent", "nodes": [{"id": i, "title": t} for i, t in nodes],
        })
        assert status == 201, body
        return body

    async def create_execution(self, workflow_id: str | None = None, input_data=None) -> dict:
        workflow_id = workflow_id or (await self.create_workflow())["id"]
        status, body = await self.request("POST", "/api/v1/executions", json={
            "workflow_id": workflow_id, "input_data": input_data or {"q": "hello"},
        })
        assert status == 201, body
        return body

    def ws(self, execution_id: str, **params):
        return self.client.ws_connect(
            f"/api/v1/ws/executions/{execution_id}", params=params, headers=self.headers,
        )


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
