"""GET /metrics: Prometheus text an operator can scrape without a token, per app."""

import asyncio

from .helpers import next_json, next_status, scrape, terminate_listener, value


async def test_requests_by_route_and_status_sockets_subscriptions_and_listener(client, user, sql, config):
    execution = await user.create_execution()
    await user.request("GET", f"/api/v1/executions/{execution['id']}")
    await user.request("GET", "/api/v1/executions/00000000-0000-0000-0000-000000000000")
    await client.get("/api/v1/executions")  # no token
    await client.get("/no/such/path")

    async with user.ws(execution["id"]) as ws:
        await next_json(ws)
        await sql.execute("UPDATE executions SET status='running', progress=5 WHERE id=%s", (execution["id"],))
        assert (await next_status(ws))["status"] == "running"  # after the snapshot's nodes
        samples = await scrape(client)
        assert value(samples, "aiagent_open_sockets") == 1
        assert value(samples, "aiagent_subscriptions") == 1
        assert value(samples, "aiagent_listener_connected") == 1
        assert value(samples, "aiagent_listener_notifications_total") >= 1

    route = "/api/v1/executions/{id}"
    assert value(samples, "aiagent_http_requests_total", route=route, method="GET", status="200") == 1
    assert value(samples, "aiagent_http_requests_total", route=route, method="GET", status="404") == 1
    assert value(samples, "aiagent_http_requests_total", route="/api/v1/executions", method="GET",
                 status="401") == 1
    assert value(samples, "aiagent_http_requests_total", route="/api/v1/executions", method="POST",
                 status="201") == 1
    assert value(samples, "aiagent_http_requests_total", route="unmatched", method="GET", status="404") == 1
    # One series per route, never per id.
    assert not [key for key in samples if execution["id"] in str(key)]
    # The push path's own series exist from the start (labelled ones appear on first use).
    assert ("aiagent_commit_to_send_seconds_count", ()) in samples
    assert ("aiagent_reconcile_corrections_total", ()) in samples

    after = await scrape(client)
    assert value(after, "aiagent_open_sockets") == 0


async def test_socket_handshakes_are_counted_and_a_plain_get_gets_the_error_shape(client, user):
    """Socket routes skip the HTTP middlewares: their handshake counts, logs and shapes errors itself."""
    execution = await user.create_execution()
    path = f"/api/v1/ws/executions/{execution['id']}"
    async with user.ws(execution["id"]) as ws:
        await next_json(ws)
    # No Upgrade header: an ordinary GET.
    response = await client.get(path, headers={**user.headers, "X-Request-ID": "plain-get-1"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"
    assert response.headers["X-Request-ID"] == "plain-get-1"
    response = await client.get("/api/v1/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert response.status == 400  # no Sec-WebSocket-Key
    assert (await response.json())["error"]["code"] == "bad_request"

    samples = await scrape(client)
    route = "/api/v1/ws/executions/{id}"
    assert value(samples, "aiagent_http_requests_total", route=route, method="GET", status="101") == 1
    assert value(samples, "aiagent_http_requests_total", route=route, method="GET", status="400") == 1
    assert value(samples, "aiagent_http_requests_total", route="/api/v1/ws", method="GET", status="400") == 1


async def test_listener_reconnects_are_counted(client, config):
    before = value(await scrape(client), "aiagent_listener_reconnects_total")
    await terminate_listener(config.database_url)
    for _ in range(100):
        samples = await scrape(client)
        if value(samples, "aiagent_listener_reconnects_total") > before and value(
                samples, "aiagent_listener_connected") == 1:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "aiagent_listener_reconnects_total") == before + 1


async def test_two_apps_in_one_process_keep_separate_counts(client_with):
    first = await client_with()
    second = await client_with()
    for _ in range(3):
        await first.get("/healthz")
    await second.get("/healthz")
    key = dict(route="/healthz", method="GET", status="200")
    assert value(await scrape(first), "aiagent_http_requests_total", **key) == 3
    assert value(await scrape(second), "aiagent_http_requests_total", **key) == 1
