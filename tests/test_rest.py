"""REST: every endpoint's success path and each error status, with the error body checked."""

import asyncio
import io
import json
import uuid

import pytest

from .actors import auth, token_for


def assert_error(status, body, expected_status, code):
    assert status == expected_status, body
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


async def raw(client, method, path, *, data=None, headers=None):
    response = await client.request(method, path, data=data, headers=headers or {})
    return response.status, await response.json()


# -- workflows -------------------------------------------------------------------------------

async def test_create_get_and_list_workflows(user, other_user):
    created = await user.create_workflow(nodes=[("plan", "Plan"), ("search", "Search")])
    assert created["owner"] == user.sub
    assert created["nodes"] == [{"id": "plan", "title": "Plan"}, {"id": "search", "title": "Search"}]

    status, body = await user.request("GET", f"/api/v1/workflows/{created['id']}")
    assert (status, body) == (200, created)

    await other_user.create_workflow()
    status, body = await user.request("GET", "/api/v1/workflows")
    assert status == 200
    assert [w["id"] for w in body["items"]] == [created["id"]]

    status, body = await other_user.request("GET", f"/api/v1/workflows/{created['id']}")
    assert_error(status, body, 404, "not_found")


@pytest.mark.parametrize("payload, field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "ok", "nodes": "plan"}, "nodes"),
    ({"name": "ok", "nodes": [{"id": "a"}]}, "nodes"),
    ({"name": "ok", "nodes": [{"id": "a", "title": "A"}, {"id": "a", "title": "B"}]}, "nodes"),
    ({"name": "bad\u0000name"}, "name"),
    ({"name": "lone \ud800 surrogate"}, "name"),
    ({"name": "ok", "nodes": [{"id": "a\udc00", "title": "A"}]}, "nodes"),
    ({"name": "ok", "extra": 1}, "extra"),
])
async def test_workflow_validation_is_422_per_field(user, payload, field):
    status, body = await user.request("POST", "/api/v1/workflows", json=payload)
    assert_error(status, body, 422, "validation_failed")
    assert field in body["error"]["details"]["fields"]


# -- executions ------------------------------------------------------------------------------

async def test_create_and_get_execution(user):
    workflow = await user.create_workflow()
    status, body = await user.request("POST", "/api/v1/executions", json={
        "workflow_id": workflow["id"], "input_data": {"question": "why?", "n": [1, 2.5, None, True]},
    })
    assert status == 201
    assert body["status"] == "pending" and body["progress"] == 0 and body["seq"] == 1
    assert body["workflow_id"] == workflow["id"] and body["owner"] == user.sub
    assert body["input_data"] == {"question": "why?", "n": [1, 2.5, None, True]}
    assert body["started_at"] is None and body["execution_time"] is None

    status, fetched = await user.request("GET", f"/api/v1/executions/{body['id']}")
    assert (status, fetched) == (200, body)


async def test_execution_needs_a_workflow_the_caller_can_see(user, other_user):
    theirs = await other_user.create_workflow()
    for workflow_id in (theirs["id"], str(uuid.uuid4())):
        status, body = await user.request("POST", "/api/v1/executions", json={"workflow_id": workflow_id})
        assert_error(status, body, 422, "validation_failed")
        assert "workflow_id" in body["error"]["details"]["fields"]
    status, body = await user.request("POST", "/api/v1/executions", json={"workflow_id": "not-a-uuid"})
    assert_error(status, body, 422, "validation_failed")


async def test_workers_see_everything_users_only_their_own(user, other_user, worker):
    execution = await user.create_execution()
    status, body = await other_user.request("GET", f"/api/v1/executions/{execution['id']}")
    assert_error(status, body, 404, "not_found")
    missing_status, missing = await other_user.request("GET", f"/api/v1/executions/{uuid.uuid4()}")
    assert missing_status == 404 and missing["error"]["code"] == body["error"]["code"]
    assert missing["error"]["message"] == body["error"]["message"]

    status, body = await worker.request("GET", f"/api/v1/executions/{execution['id']}")
    assert status == 200 and body["id"] == execution["id"]


async def test_list_executions_filters_and_pages(user, worker):
    first_workflow = await user.create_workflow()
    second_workflow = await user.create_workflow()
    created = [await user.create_execution(first_workflow["id"]) for _ in range(5)]
    other = await user.create_execution(second_workflow["id"])
    await worker.request("PATCH", f"/api/v1/executions/{created[0]['id']}", json={"status": "running"})

    status, body = await user.request("GET", "/api/v1/executions", params={"limit": "2"})
    assert status == 200
    seen, cursor = [item["id"] for item in body["items"]], body["next_cursor"]
    while cursor:
        status, body = await user.request("GET", "/api/v1/executions", params={"limit": "2", "cursor": cursor})
        assert status == 200
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
    newest_first = [other["id"]] + [e["id"] for e in reversed(created)]
    assert seen == newest_first

    status, body = await user.request("GET", "/api/v1/executions", params={"workflow_id": second_workflow["id"]})
    assert [item["id"] for item in body["items"]] == [other["id"]]
    status, body = await user.request("GET", "/api/v1/executions", params={"status": "running"})
    assert [item["id"] for item in body["items"]] == [created[0]["id"]]


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"status": "done"}, "status"),
    ({"workflow_id": "nope"}, "workflow_id"),
    ({"cursor": "garbage"}, "cursor"),
    ({"cursor": "WyJub3QgYSBkYXRlIiwgIngiXQ=="}, "cursor"),
])
async def test_list_query_validation(user, params, field):
    status, body = await user.request("GET", "/api/v1/executions", params=params)
    assert_error(status, body, 422, "validation_failed")
    assert field in body["error"]["details"]["fields"]


# -- patch -----------------------------------------------------------------------------------

async def test_worker_patches_through_the_state_machine(user, worker):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}"
    status, body = await worker.request("PATCH", path, json={"status": "running", "progress": 10, "message": "go"})
    assert status == 200
    assert (body["status"], body["progress"], body["message"], body["seq"]) == ("running", 10, "go", 2)
    assert body["started_at"] is not None

    status, body = await worker.request("PATCH", path, json={"status": "completed", "result": {"ok": True}})
    assert status == 200
    assert body["status"] == "completed" and body["result"] == {"ok": True} and body["progress"] == 100
    assert body["execution_time"] >= 0 and body["finished_at"] is not None

    status, body = await worker.request("PATCH", path, json={"status": "running"})
    assert_error(status, body, 409, "conflict")
    status, body = await worker.request("GET", path)
    assert body["status"] == "completed" and body["seq"] == 3


async def test_illegal_transition_is_409_and_changes_nothing(user, worker):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}"
    status, body = await worker.request("PATCH", path, json={"status": "completed"})
    assert_error(status, body, 409, "conflict")
    assert "pending" in body["error"]["message"] and "completed" in body["error"]["message"]
    status, body = await worker.request("GET", path)
    assert (body["status"], body["seq"]) == ("pending", 1)


async def test_users_cannot_patch(user, other_user):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}"
    status, body = await user.request("PATCH", path, json={"progress": 5})
    assert_error(status, body, 403, "forbidden")
    status, body = await other_user.request("PATCH", path, json={"progress": 5})
    assert_error(status, body, 404, "not_found")


@pytest.mark.parametrize("payload, field", [
    ({"progress": 101}, "progress"),
    ({"progress": -1}, "progress"),
    ({"progress": True}, "progress"),
    ({"progress": 5.5}, "progress"),
    ({"progress": "5"}, "progress"),
    ({"status": "done"}, "status"),
    ({"status": None}, "status"),
    ({"message": 7}, "message"),
    ({"error": "a\u0000b"}, "error"),
    ({"result": {"k\u0000": 1}}, "result"),
    ({"message": "lone \ud800 surrogate"}, "message"),
    ({"error": "\udfff"}, "error"),
    ({"result": {"k\udc00": ["\ud83d"]}}, "result"),
    ({"seq": 99}, "seq"),
    ({"owner": "me"}, "owner"),
    ({}, "_schema"),
])
async def test_patch_validation_is_422_per_field(user, worker, payload, field):
    execution = await user.create_execution()
    status, body = await worker.request("PATCH", f"/api/v1/executions/{execution['id']}", json=payload)
    assert_error(status, body, 422, "validation_failed")
    assert field in body["error"]["details"]["fields"]


async def test_patch_unknown_execution_is_404(worker):
    for ident in (str(uuid.uuid4()), "not-a-uuid", "%00", "x" * 1000):
        status, body = await worker.request("PATCH", f"/api/v1/executions/{ident}", json={"progress": 1})
        assert_error(status, body, 404, "not_found")


async def test_patch_of_a_node_id_no_node_can_have_is_404(user, worker):
    """One with NUL (the database cannot hold it), one too long, one that is simply not there."""
    execution = await user.create_execution()
    for node_id in ("a%00b", "x" * 101, "nope"):
        status, body = await worker.request("PATCH", f"/api/v1/executions/{execution['id']}/nodes/{node_id}",
                                            json={"status": "running"})
        assert_error(status, body, 404, "not_found")


# -- malformed, oversized, unauthenticated ---------------------------------------------------

@pytest.mark.parametrize("data", [
    b"{", b"not json", b"", b"\xff\xfe\x00", b'{"name": NaN}', b'{"progress": Infinity}',
    b"[" * 100_000 + b"]" * 100_000,
])
async def test_malformed_json_is_400(client, user, data):
    headers = auth(token_for("someone", "worker"))
    execution = await user.create_execution()
    for method, path in (("POST", "/api/v1/workflows"), ("POST", "/api/v1/executions"),
                         ("PATCH", f"/api/v1/executions/{execution['id']}"),
                         ("PATCH", f"/api/v1/executions/{execution['id']}/nodes/plan"),
                         ("POST", f"/api/v1/executions/{execution['id']}/logs")):
        status, body = await raw(client, method, path, data=data, headers=headers)
        assert_error(status, body, 400, "bad_request")


@pytest.mark.parametrize("data", [b"[]", b'"text"', b"42", b"null"])
async def test_json_that_is_not_an_object_is_422(client, data):
    status, body = await raw(client, "POST", "/api/v1/workflows", data=data, headers=auth(token_for("a")))
    assert_error(status, body, 422, "validation_failed")


async def test_oversized_body_is_413(client, config):
    data = io.BytesIO(json.dumps({"name": "big", "nodes": [], "pad": "x" * config.max_body_bytes}).encode())
    status, body = await raw(client, "POST", "/api/v1/workflows", data=data, headers=auth(token_for("a")))
    assert_error(status, body, 413, "payload_too_large")


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer not.a.jwt"},
    {"Authorization": "Bearer " + token_for("a", ttl=-10)},
])
async def test_missing_or_bad_token_is_401(client, headers):
    for method, path in (("GET", "/api/v1/executions"), ("POST", "/api/v1/workflows"),
                         ("GET", f"/api/v1/executions/{uuid.uuid4()}"), ("GET", "/api/v1/workflows")):
        response = await client.request(method, path, headers=headers)
        assert_error(response.status, await response.json(), 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_token_signed_with_another_secret_is_401(client):
    import time

    import jwt
    forged = jwt.encode({"sub": "a", "role": "admin", "exp": time.time() + 60}, "other-secret-0123456789abcdef0123", "HS256")
    status, body = await raw(client, "GET", "/api/v1/executions", headers=auth(forged))
    assert_error(status, body, 401, "unauthorized")


async def test_a_token_accepted_before_is_refused_once_it_expires(client):
    # exp is whole seconds: a 1 s token can be expired a millisecond after it is made.
    token = token_for("a", ttl=3)
    status, _ = await raw(client, "GET", "/api/v1/executions", headers=auth(token))
    assert status == 200
    await asyncio.sleep(3.1)
    status, body = await raw(client, "GET", "/api/v1/executions", headers=auth(token))
    assert_error(status, body, 401, "unauthorized")
    assert body["error"]["message"] == "token expired"


async def test_unknown_route_and_method_use_the_error_shape(client):
    status, body = await raw(client, "GET", "/api/v1/nothing-here")
    assert_error(status, body, 404, "not_found")
    status, body = await raw(client, "DELETE", "/api/v1/executions")
    assert_error(status, body, 405, "method_not_allowed")


async def test_health_and_readiness(client):
    status, body = await raw(client, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, body = await raw(client, "GET", "/readyz")
    assert status == 200 and body["checks"] == {"database": True, "listener": True}
