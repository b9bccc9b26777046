"""Test callers: each with its own token, so tests never see each other's data."""

import uuid

from service.auth import issue_token

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"


def token_for(sub: str, role: str = "user", ttl: float = 3600) -> str:
    return issue_token(JWT_SECRET, sub, role, ttl)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Actor:
    """A caller with a fresh subject and its own token."""

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
