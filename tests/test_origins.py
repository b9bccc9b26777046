"""Browsers: CORS for the configured origins on REST, and WebSocket handshakes from other sites refused."""

import aiohttp
import pytest

from service.config import ConfigError, load_config

from .actors import Actor
from .helpers import next_json

APP_ORIGIN = "https://app.example.com"
EVIL_ORIGIN = "https://evil.example.net"


@pytest.fixture
async def client(client_with):
    return await client_with(allowed_origins=(APP_ORIGIN,))


async def test_preflight_needs_no_token_and_names_what_a_browser_may_send(client):
    response = await client.options("/api/v1/executions", headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "Origin" in response.headers["Vary"]


async def test_preflight_from_another_origin_is_refused(client):
    response = await client.options("/api/v1/executions", headers={
        "Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"})
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert (await response.json())["error"]["code"] == "forbidden"


async def test_responses_carry_cors_headers_only_for_allowed_origins_errors_included(client):
    user = Actor(client)
    ok = await client.get("/api/v1/executions", headers={**user.headers, "Origin": APP_ORIGIN})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "X-Request-ID" in ok.headers["Access-Control-Expose-Headers"]

    # A browser can read why a call failed.
    refused = await client.get("/api/v1/executions", headers={"Origin": APP_ORIGIN})
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == APP_ORIGIN

    foreign = await client.get("/api/v1/executions", headers={**user.headers, "Origin": EVIL_ORIGIN})
    assert "Access-Control-Allow-Origin" not in foreign.headers

    no_origin = await client.get("/api/v1/executions", headers=user.headers)
    assert no_origin.status == 200 and "Access-Control-Allow-Origin" not in no_origin.headers


async def test_websocket_handshake_from_another_origin_is_refused(client):
    user = Actor(client)
    execution = await user.create_execution()
    path = f"/api/v1/ws/executions/{execution['id']}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(path, headers={**user.headers, "Origin": EVIL_ORIGIN})
    assert refused.value.status == 403

    # The configured origin, the service's own origin, and clients that send no Origin all get in.
    own_origin = f"http://{client.host}:{client.port}"
    for origin in (APP_ORIGIN, own_origin, None):
        headers = {**user.headers, **({"Origin": origin} if origin else {})}
        async with client.ws_connect(path, headers=headers) as ws:
            assert (await next_json(ws))["status"] == "pending"


async def test_the_multiplexed_socket_is_guarded_too(client):
    user = Actor(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/api/v1/ws", headers={**user.headers, "Origin": EVIL_ORIGIN})
    assert refused.value.status == 403


async def test_a_wildcard_allows_every_origin(client_with):
    client = await client_with(allowed_origins=("*",))
    response = await client.options("/api/v1/workflows", headers={
        "Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "GET"})
    assert response.status == 204 and response.headers["Access-Control-Allow-Origin"] == EVIL_ORIGIN


def test_allowed_origins_from_the_file_and_from_the_environment(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('allowed_origins = ["https://a.example/", "https://b.example"]\n')
    assert load_config(path, environ={}).allowed_origins == ("https://a.example", "https://b.example")
    environ = {"ALLOWED_ORIGINS": "https://c.example, https://d.example"}
    assert load_config(path, environ=environ).allowed_origins == ("https://c.example", "https://d.example")
    (tmp_path / "empty.toml").write_text("")
    assert load_config(tmp_path / "empty.toml", environ={}).allowed_origins == ()
    path.write_text("allowed_origins = [1]\n")
    with pytest.raises(ConfigError):
        load_config(path, environ={})
