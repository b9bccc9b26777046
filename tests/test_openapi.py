"""The OpenAPI document: complete, served, and true. Schemathesis checks every documented
operation of a real `python -m service serve` process against it."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.api.openapi import openapi_document
from service.app import create_app
from service.config import Config

from .actors import JWT_SECRET, auth, token_for
from .servers import free_port, wait_ready

WORKER_TOKEN = token_for("schemathesis-worker", "worker")
SCHEMA = schemathesis.openapi.from_dict(openapi_document())
# Unknown query parameters are ignored on purpose (cache-busters, tracking): not a negative case.
SCHEMA.config.generation.update(allow_extra_parameters=False)
# Event streams do not end while their execution runs (the generated requests would time out):
# tests/test_sse*.py drive them, hostile input included.
SCHEMA = SCHEMA.exclude(tag="live")


def documented_operations(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}


def test_every_http_route_is_documented():
    app = create_app(Config(database_url="postgresql://unused", jwt_secret="unused"))
    routes = {
        (route.method, route.resource.canonical) for route in app.router.routes()
        # WebSocket endpoints (under /api/v1/ws) are described in the README, not in OpenAPI.
        if route.method != "HEAD" and "ws" not in route.resource.canonical.split("/")
        # The dashboard's page and static files are not API.
        and route.resource.canonical != "/" and not route.resource.canonical.startswith("/static")
    }
    assert routes == documented_operations(openapi_document())


async def test_the_document_is_served_without_a_token(client):
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    patch = document["paths"]["/api/v1/executions/{id}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExecutionPatch"}
    assert {"400", "401", "403", "404", "409", "413", "422"} <= patch["responses"].keys()
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={**auth(WORKER_TOKEN), "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def served(database_url, tmp_path_factory):
    """A real server process, plus a workflow and executions for generated requests to find."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("schemathesis") / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], stdout=log_file, stderr=log_file,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "PORT": str(port),
                 "LOG_FORMAT": "json", "LOG_LEVEL": "warning"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        workflow = post(base, "/api/v1/workflows", {"name": "fuzzed", "nodes": [{"id": "a", "title": "A"}]})
        executions = [post(base, "/api/v1/executions", {"workflow_id": workflow["id"]}) for _ in range(20)]
        yield {"base": base, "workflow_id": workflow["id"], "execution_ids": [e["id"] for e in executions],
               "log": log_path}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert '"http.unhandled"' not in log_path.read_text(), "the server logged an unhandled error"


def is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
        return True
    except ValueError:
        return False


def aim_at_real_rows(case, served: dict) -> None:
    """Random UUIDs name nothing; half the time point valid ones at rows that exist, so the
    success paths (reads, patches, state transitions) are exercised too."""
    path_id = (case.path_parameters or {}).get("id")
    if is_uuid(path_id) and uuid.UUID(str(path_id)).int % 2 == 0:
        ids = served["execution_ids"] if "executions" in case.operation.path else [served["workflow_id"]]
        case.path_parameters["id"] = ids[uuid.UUID(str(path_id)).int % len(ids)]
    body = case.body if isinstance(case.body, dict) else {}
    if is_uuid(body.get("workflow_id")) and uuid.UUID(str(body["workflow_id"])).int % 2 == 0:
        body["workflow_id"] = served["workflow_id"]


# Every default check but one: a request the schema allows may still be refused for a rule JSON
# Schema cannot say (the workflow must exist and be yours, a cursor must be one this API issued,
# node ids unique, a name not blank), and that refusal is a documented 404/409/422.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_every_response_matches_the_document(case, served):
    aim_at_real_rows(case, served)
    case.call_and_validate(base_url=served["base"], headers=auth(WORKER_TOKEN), timeout=10,
                           excluded_checks=EXCLUDED_CHECKS)
