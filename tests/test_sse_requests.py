"""What an event stream refuses, before it starts: each refusal a clear 4xx (or 505) in the one
error shape, never a 500; the limits streams share with sockets; origins; tokens kept out of logs."""

import uuid

import pytest

from .actors import Actor, auth, token_for
from .helpers import RawEventStream, events_path

FEED = "/api/v1/executions/events"


async def refusal(client, path: str, headers: dict, **options) -> tuple[int, dict]:
    stream = await RawEventStream.open(client, path, headers, **options)
    try:
        assert stream.headers["content-type"].startswith("application/json"), stream.headers
        return stream.status, (await stream.json_body())["error"]
    finally:
        await stream.close()


@pytest.fixture
async def execution_id(user) -> str:
    return (await user.create_execution())["id"]


@pytest.mark.parametrize("path_id", ["not-a-uuid", "x" * 2000, str(uuid.uuid4()), "%00", "..%2F..%2Fetc"])
async def test_a_bad_or_unknown_id_is_404(client, user, path_id):
    status, error = await refusal(client, f"/api/v1/executions/{path_id}/events", user.headers)
    assert (status, error["code"], error["message"]) == (404, "not_found", "no such execution")


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "1e3", "99999999999999999999", "", "0x10"])
async def test_a_bad_since_is_422(client, user, execution_id, since):
    status, error = await refusal(client, events_path(execution_id) + f"?since={since}", user.headers)
    assert (status, error["code"]) == (422, "validation_failed")
    assert "since" in error["details"]["fields"]


@pytest.mark.parametrize("last_event_id", [
    "abc", "-1", "1.0", "1 2", "99999999999999999999", "٣", "9" * 8000])
async def test_a_bad_last_event_id_is_400(client, user, execution_id, last_event_id):
    headers = {**user.headers, "Last-Event-ID": last_event_id}
    status, error = await refusal(client, events_path(execution_id), headers)
    assert (status, error["code"]) == (400, "bad_request")
    assert "Last-Event-ID" in error["message"] and len(error["details"]["last_event_id"]) <= 40


@pytest.mark.parametrize("accept", ["application/json", "text/html, application/xml", "text/event-stream;q=0",
                                    "text/event-stream; q=0.0, application/json"])
async def test_an_accept_without_event_stream_is_406(client, user, execution_id, accept):
    for path in (events_path(execution_id), FEED):
        status, error = await refusal(client, path, user.headers, accept=accept)
        assert (status, error["code"]) == (406, "not_acceptable")


@pytest.mark.parametrize("accept", [None, "*/*", "text/*", "text/event-stream",
                                    "application/json, text/event-stream", "TEXT/EVENT-STREAM;q=0.5"])
async def test_any_accept_that_takes_event_stream_is_served(client, user, execution_id, accept):
    stream = await RawEventStream.open(client, events_path(execution_id), user.headers, accept=accept)
    await stream.close()
    assert stream.status == 200


async def test_http_1_0_is_refused_with_505_naming_the_fix(client, user, execution_id):
    status, error = await refusal(client, events_path(execution_id), user.headers, version="1.0")
    assert (status, error["code"]) == (505, "http_version_not_supported")
    assert "proxy_http_version 1.1" in error["message"]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer garbage"}, {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer " + "x" * 8000},
])
async def test_a_missing_or_bad_token_is_401(client, execution_id, headers):
    for path in (events_path(execution_id), FEED):
        stream = await RawEventStream.open(client, path, headers)
        await stream.json_body()
        await stream.close()
        assert (stream.status, stream.headers["www-authenticate"]) == (401, "Bearer")


async def test_an_expired_token_in_the_query_is_401(client, user, execution_id):
    expired = token_for(user.sub, ttl=-10)
    status, error = await refusal(client, events_path(execution_id, access_token=expired), {})
    assert (status, error["message"]) == (401, "token expired")


@pytest.mark.parametrize("query, field", [("status=weird", "status"), ("workflow_id=nope", "workflow_id"),
                                          ("status=", "status")])
async def test_bad_feed_filters_are_422(client, user, query, field):
    status, error = await refusal(client, f"{FEED}?{query}", user.headers)
    assert (status, error["code"]) == (422, "validation_failed") and field in error["details"]["fields"]


async def test_head_is_not_a_way_into_a_stream(client, user, execution_id):
    response = await client.head(events_path(execution_id), headers=user.headers)
    assert response.status == 405


async def test_headers_over_the_servers_limit_are_a_400_not_a_500(client, user, execution_id):
    """aiohttp's parser refuses them before any handler runs (its own plain answer, not the error shape)."""
    stream = await RawEventStream.open(client, events_path(execution_id),
                                       {**user.headers, "Last-Event-ID": "1" * 20_000})
    await stream.close()
    assert stream.status == 400


async def test_streams_count_among_the_subjects_connections(client_with):
    client = await client_with(ws_max_sockets_per_subject=2)
    user = Actor(client)
    execution = await user.create_execution()
    first = await RawEventStream.open(client, events_path(execution["id"]), user.headers)
    async with user.ws(execution["id"]):
        status, error = await refusal(client, FEED, user.headers)
        assert (status, error["code"]) == (429, "too_many_connections") and "limit 2" in error["message"]
        other = Actor(client)
        stream = await RawEventStream.open(client, FEED, other.headers)
        assert stream.status == 200, "the limit is per subject"
        await stream.close()
    await first.close()


async def test_another_sites_page_is_refused_and_an_allowed_one_gets_cors_headers(client_with):
    client = await client_with(allowed_origins=("http://app.example",))
    user = Actor(client)
    execution = await user.create_execution()
    evil = {**user.headers, "Origin": "http://evil.example"}
    allowed = {**user.headers, "Origin": "http://app.example"}
    status, error = await refusal(client, events_path(execution["id"]), evil)
    assert (status, error["code"]) == (403, "forbidden")
    stream = await RawEventStream.open(client, events_path(execution["id"]), allowed)
    await stream.close()
    assert (stream.status, stream.headers["access-control-allow-origin"]) == (200, "http://app.example")
    # Refusals a page may read (its token refused, no such execution) carry them too.
    stream = await RawEventStream.open(client, events_path(str(uuid.uuid4())), allowed)
    await stream.close()
    assert (stream.status, stream.headers["access-control-allow-origin"]) == (404, "http://app.example")


async def test_the_access_log_has_the_path_without_the_token(client, user, execution_id, capsys):
    stream = await RawEventStream.open(client, events_path(execution_id, access_token=user.token), {})
    await stream.next_event()
    await stream.close()
    status, _ = await refusal(client, events_path(execution_id, access_token=user.token + "x"), {})
    assert status == 401
    out = capsys.readouterr().out
    assert f"path=/api/v1/executions/{execution_id}/events" in out
    assert user.token.split(".")[2][:20] not in out, "a token reached the logs"


async def test_every_route_answers_the_one_error_shape_with_the_request_id(client, user, execution_id):
    stream = await RawEventStream.open(client, events_path(execution_id),
                                       {**user.headers, "X-Request-ID": "sse-1"}, accept="application/json")
    await stream.json_body()
    await stream.close()
    assert (stream.status, stream.headers["x-request-id"]) == (406, "sse-1")
    stream = await RawEventStream.open(client, events_path(execution_id),
                                       {**user.headers, "X-Request-ID": "sse-2"})
    await stream.close()
    assert (stream.status, stream.headers["x-request-id"]) == (200, "sse-2")


async def test_a_worker_token_in_the_header_and_a_user_token_in_the_query(client, user, worker, execution_id):
    for headers, path in ((worker.headers, events_path(execution_id)),
                          ({}, events_path(execution_id, access_token=user.token)),
                          (auth(user.token), FEED)):
        stream = await RawEventStream.open(client, path, headers)
        event = await stream.next_event()
        await stream.close()
        assert stream.status == 200 and event["data"]["type"] in ("status", "subscribed")
