"""Browsers: CORS for the configured origins on REST and /static/, WebSocket handshakes from other
sites refused, loopback origins in development mode, and a refused origin explained to the page
(GET /api/v1/origin-check) and logged once for the operator."""

import aiohttp
import pytest
from structlog.testing import capture_logs

from service.app import create_app
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


# -- development mode: front ends on this machine ------------------------------------------------

LOOPBACK_ORIGINS = ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080",
                    "https://localhost")
NOT_LOOPBACK = ("http://localhost.example.com:5173", "http://127.0.0.1.nip.io:3000",
                "http://192.168.1.20:5173", "http://localhost:notaport", "file://localhost", "null")


@pytest.fixture
async def development_client(aiohttp_client, config):
    """The app as `make run` builds it: on the embedded database it started, with no allowed_origins."""
    return await aiohttp_client(create_app(config, development=True))


async def test_in_development_any_loopback_origin_may_call_the_api_and_open_sockets(development_client):
    user = Actor(development_client)
    execution = await user.create_execution()
    for origin in LOOPBACK_ORIGINS:
        preflight = await development_client.options("/api/v1/executions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == origin
        listed = await development_client.get("/api/v1/executions",
                                              headers={**user.headers, "Origin": origin})
        assert listed.headers["Access-Control-Allow-Origin"] == origin
        async with user.client.ws_connect(f"/api/v1/ws/executions/{execution['id']}",
                                          headers={**user.headers, "Origin": origin}) as ws:
            assert (await next_json(ws))["status"] == "pending"
    for origin in NOT_LOOPBACK:
        preflight = await development_client.options("/api/v1/executions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status == 403, origin
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await development_client.ws_connect(f"/api/v1/ws/executions/{execution['id']}",
                                                headers={**user.headers, "Origin": origin})


async def test_in_production_a_loopback_origin_is_one_like_any_other(client):
    # `client` runs on a DATABASE_URL: only the configured origin and the service's own.
    preflight = await client.options("/api/v1/executions", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 403


async def test_static_files_carry_cors_headers_for_allowed_origins(development_client):
    # A page on another origin imports the module from the service (a module script is a CORS request).
    for path in ("/static/live-client.js", "/static/dashboard.js", "/static/dashboard.css"):
        response = await development_client.get(path, headers={"Origin": "http://localhost:5173"})
        assert response.status == 200, path
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:5173", path
    module = await development_client.get("/static/live-client.js")
    assert "javascript" in module.content_type
    assert "export function watchExecution" in await module.text()


async def test_live_client_js_loads_on_any_origin_so_a_refused_page_can_learn_why(client):
    # The dashboard's own files stay the allowed origins' only; the client is public code for all.
    module = await client.get("/static/live-client.js", headers={"Origin": EVIL_ORIGIN})
    assert module.status == 200 and module.headers["Access-Control-Allow-Origin"] == "*"
    dashboard = await client.get("/static/dashboard.js", headers={"Origin": EVIL_ORIGIN})
    assert "Access-Control-Allow-Origin" not in dashboard.headers
    # Revalidated by ETag, so a new release is picked up at once.
    etag = module.headers["ETag"]
    again = await client.get("/static/live-client.js", headers={"If-None-Match": etag})
    assert again.status == 304


# -- a refused origin: told to the page, logged once for the operator ----------------------------

async def test_origin_check_tells_any_page_whether_its_origin_is_allowed_and_what_to_change(client):
    refused = await client.get("/api/v1/origin-check", headers={"Origin": EVIL_ORIGIN})
    assert refused.status == 200
    assert refused.headers["Access-Control-Allow-Origin"] == "*", "readable by the refused page itself"
    assert refused.headers["Cache-Control"] == "no-store"
    body = await refused.json()
    assert body == {
        "origin": EVIL_ORIGIN, "allowed": False, "setting": "allowed_origins",
        "environment_variable": "ALLOWED_ORIGINS",
        "message": f"this service refuses pages on {EVIL_ORIGIN}: add that origin to its allowed_origins "
                   f"setting (e.g. start it with ALLOWED_ORIGINS={EVIL_ORIGIN})"}
    assert APP_ORIGIN not in await refused.text(), "it never says which origins are allowed"

    allowed = await (await client.get("/api/v1/origin-check", headers={"Origin": APP_ORIGIN})).json()
    assert allowed["allowed"] is True and allowed["origin"] == APP_ORIGIN
    no_origin = await (await client.get("/api/v1/origin-check")).json()
    assert no_origin["allowed"] is True and no_origin["origin"] is None
    sandboxed = await (await client.get("/api/v1/origin-check", headers={"Origin": "null"})).json()
    assert sandboxed["allowed"] is False and "file://" in sandboxed["message"]
    long_origin = "https://" + "a" * 5000 + ".example"
    echoed = await (await client.get("/api/v1/origin-check", headers={"Origin": long_origin})).json()
    assert len(echoed["origin"]) == 200


async def test_a_refused_origin_is_logged_once_with_the_setting_that_allows_it(client):
    user = Actor(client)
    execution = await user.create_execution()
    socket_path = f"/api/v1/ws/executions/{execution['id']}"
    other = "https://other.example.org"
    with capture_logs() as logs:
        for origin in (EVIL_ORIGIN, EVIL_ORIGIN, other, EVIL_ORIGIN):
            for _ in range(3):  # a client retrying its socket
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await client.ws_connect(socket_path, headers={**user.headers, "Origin": origin})
            preflight = await client.options("/api/v1/executions", headers={
                "Origin": origin, "Access-Control-Request-Method": "GET"})
            assert preflight.status == 403
            await client.get("/api/v1/executions", headers={**user.headers, "Origin": origin})
        # Allowed origins, requests without one, and what is open to every origin are no refusals.
        await client.get("/api/v1/executions", headers={**user.headers, "Origin": APP_ORIGIN})
        await client.get("/static/live-client.js", headers={"Origin": "https://third.example"})
        await client.get("/api/v1/origin-check", headers={"Origin": "https://third.example"})
    refusals = [entry for entry in logs if entry["event"] == "origin.refused"]
    assert [entry["origin"] for entry in refusals] == [EVIL_ORIGIN, other]
    assert refusals[0]["log_level"] == "warning"
    assert refusals[0]["path"] == socket_path, "the path only: a query string may carry a token"
    assert refusals[0]["setting"] == "allowed_origins"
    assert refusals[0]["environment_variable"] == "ALLOWED_ORIGINS"
    assert f"ALLOWED_ORIGINS={EVIL_ORIGIN}" in refusals[0]["hint"]
    assert not [entry for entry in logs if user.token in repr(entry)], "never a token in a log line"


async def test_refusals_logged_are_bounded_whatever_origins_a_client_makes_up(client, monkeypatch):
    from service.api import origin_policy

    monkeypatch.setattr(origin_policy, "MOST_REFUSALS_LOGGED", 3)
    with capture_logs() as logs:
        for number in range(10):
            await client.options("/api/v1/executions", headers={
                "Origin": f"https://made-up-{number}.example", "Access-Control-Request-Method": "GET"})
    assert len([entry for entry in logs if entry["event"] == "origin.refused"]) == 3
