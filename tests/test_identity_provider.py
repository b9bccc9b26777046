"""Tokens from an identity provider: RS256 and ES256 JWTs checked with its JWKS, served here by a
local HTTP server; iss, aud, the role claim and its map; key rotation with sockets open; floods
of made-up key ids; hostile tokens answered 401 or 4401, never 500."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import uuid

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.__main__ import with_development_defaults
from service.config import Config, ConfigError, load_config

from .actors import auth, token_for
from .helpers import next_json, next_status
from .servers import start_server

NODES = [{"id": "plan", "title": "Plan"}, {"id": "act", "title": "Act"}]


class IdentityProvider:
    """An identity provider as the service sees one: a JWKS at a URL, and the tokens it signs."""

    def __init__(self):
        self.private_keys: dict[str, object] = {}
        self.algorithms: dict[str, str] = {}
        self.published: list[dict] = []
        self.fetches = 0
        self.status = 200
        self.delay = 0.0
        self.url = ""

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="identity provider unavailable")
        return web.json_response({"keys": self.published})

    def new_key(self, algorithm: str = "RS256", publish: bool = True) -> str:
        kid = f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        if algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        self.private_keys[kid], self.algorithms[kid] = private, algorithm
        if publish:
            self.published.append({**jwk, "kid": kid, "use": "sig", "alg": algorithm})
        return kid

    def publish_only(self, *kids: str) -> None:
        self.published = [jwk for jwk in self.published if jwk["kid"] in kids]

    def token(self, kid: str, sub: str = "", ttl: float = 3600, **claims) -> str:
        now = int(time.time())
        payload = {"sub": sub or f"idp-{uuid.uuid4().hex[:8]}", "iat": now, "exp": now + int(ttl),
                   "role": "user", **claims}
        return jwt.encode(payload, self.private_keys[kid], algorithm=self.algorithms[kid],
                          headers={"kid": kid})


@pytest.fixture
async def idp(aiohttp_server) -> IdentityProvider:
    provider = IdentityProvider()
    app = web.Application()
    app.router.add_get("/jwks.json", provider.jwks)
    server = await aiohttp_server(app)
    provider.url = str(server.make_url("/jwks.json"))
    return provider


@pytest.fixture
async def idp_client(client_with, idp):
    """The service trusting `idp` beside its HS256 secret, as configured for the idp tests."""
    async def make(**changes):
        return await client_with(**{"jwks_url": idp.url, **changes})
    return make


async def request(client, method: str, path: str, token: str, **kwargs) -> tuple[int, dict]:
    response = await client.request(method, path, headers=auth(token), **kwargs)
    return response.status, await response.json()


async def create_execution(client, token: str) -> dict:
    status, workflow = await request(client, "POST", "/api/v1/workflows", token,
                                     json={"name": "idp workflow", "nodes": NODES})
    assert status == 201, workflow
    status, execution = await request(client, "POST", "/api/v1/executions", token,
                                      json={"workflow_id": workflow["id"], "input_data": {}})
    assert status == 201, execution
    return execution


async def closed_with(ws) -> int:
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE, msg
    return ws.close_code


# -- accepted tokens -------------------------------------------------------------------------

async def test_rs256_and_es256_tokens_are_accepted_beside_hs256_ones(idp, idp_client):
    rsa_kid, ec_kid = idp.new_key("RS256"), idp.new_key("ES256")
    client = await idp_client()
    alice = idp.token(rsa_kid, sub="alice")
    execution = await create_execution(client, alice)
    path = f"/api/v1/executions/{execution['id']}"
    assert (await request(client, "GET", path, alice))[0] == 200
    # The same subject, signed with the other key: the same principal.
    assert (await request(client, "GET", path, idp.token(ec_kid, sub="alice")))[0] == 200
    # Another subject, a user: not its execution. An admin of the provider: sees it.
    bob = idp.token(ec_kid, sub="bob")
    assert (await request(client, "GET", path, bob))[0] == 404
    admin = idp.token(rsa_kid, role="admin")
    assert (await request(client, "GET", path, admin))[0] == 200
    # The service's own HS256 tokens work exactly as before.
    assert (await request(client, "GET", path, token_for("w", "worker")))[0] == 200
    # One fetch of the JWKS served every key.
    assert idp.fetches == 1

    for path in (f"/api/v1/ws/executions/{execution['id']}", "/api/v1/ws"):
        async with client.ws_connect(path, params={"access_token": alice}) as ws:
            await ws.send_json({"type": "ping"})
            if path == "/api/v1/ws":
                assert await next_json(ws) == {"type": "pong"}
            else:
                assert (await next_status(ws))["execution_id"] == execution["id"]


async def test_only_identity_provider_tokens_when_there_is_no_secret(idp, idp_client):
    kid = idp.new_key("ES256")
    client = await idp_client(jwt_secret="")
    assert (await request(client, "GET", "/api/v1/executions", idp.token(kid)))[0] == 200
    claims = {"sub": "m", "role": "admin", "exp": 2**40}
    signing_input = f"{b64(json.dumps({'alg': 'HS256'}))}.{b64(json.dumps(claims))}"
    empty_key = f"{signing_input}.{b64(hmac.new(b'', signing_input.encode(), hashlib.sha256).digest())}"
    for hs256 in (token_for("mallory", "admin"), empty_key):
        status, body = await request(client, "GET", "/api/v1/executions", hs256)
        assert (status, body["error"]["message"]) == (401, "invalid token")


async def test_issuer_and_audience_are_checked_when_configured(idp, idp_client):
    kid = idp.new_key()
    client = await idp_client(jwt_issuer="https://idp.example.com/", jwt_audience="aiagent-live")
    good = {"iss": "https://idp.example.com/", "aud": ["aiagent-live", "other-app"]}
    assert (await request(client, "GET", "/api/v1/executions", idp.token(kid, **good)))[0] == 200
    for claims, reason in (
        ({**good, "iss": "https://evil.example.com/"}, "token issuer not accepted"),
        ({**good, "aud": "other-app"}, "token audience not accepted"),
        ({"aud": "aiagent-live"}, "invalid token"),  # no iss
        ({"iss": "https://idp.example.com/"}, "invalid token"),  # no aud
    ):
        status, body = await request(client, "GET", "/api/v1/executions", idp.token(kid, **claims))
        assert (status, body["error"]["message"]) == (401, reason), claims


async def test_a_provider_clock_a_little_ahead_is_allowed_for_but_not_past_expiry(idp, idp_client):
    kid = idp.new_key()
    client = await idp_client()
    now = int(time.time())
    for claims, expected in (({"iat": now + 20, "nbf": now + 20}, 200), ({"iat": now + 120}, 401),
                             ({"nbf": now + 120}, 401), ({"exp": now - 1}, 401)):
        status, body = await request(client, "GET", "/api/v1/executions", idp.token(kid, **claims))
        assert status == expected, (claims, body)
    status, body = await request(client, "GET", "/api/v1/executions", idp.token(kid, exp=now - 1))
    assert body["error"]["message"] == "token expired"


async def test_an_audience_is_not_checked_unless_configured(idp, idp_client):
    # Providers put an aud in every token; without jwt_audience it is not held against them.
    kid = idp.new_key()
    client = await idp_client()
    assert (await request(client, "GET", "/api/v1/executions", idp.token(kid, aud="whatever")))[0] == 200


async def test_the_role_comes_from_a_configured_claim_through_the_map(idp, idp_client, user):
    kid = idp.new_key()
    client = await idp_client(role_claim="realm_access.roles",
                              role_map=("agent-admin=admin", "agent-ops=worker"))
    execution = await create_execution(client, token_for("owner"))

    def with_roles(*roles, **claims):
        return idp.token(kid, realm_access={"roles": ["offline_access", *roles]}, role="admin", **claims)

    ops = with_roles("agent-ops")
    path = f"/api/v1/executions/{execution['id']}"
    status, body = await request(client, "PATCH", path, ops, json={"progress": 5})
    assert (status, body["progress"]) == (200, 5)
    # The strongest role named wins; names outside the map count for nothing (the top-level
    # "role": "admin" is not the configured claim).
    assert (await request(client, "GET", path, with_roles("agent-ops", "agent-admin")))[0] == 200
    for token in (with_roles(), with_roles("admin", "worker")):
        status, body = await request(client, "GET", "/api/v1/executions", token)
        assert (status, body["error"]["message"]) == (401, "token has no accepted role")


async def test_a_claim_named_by_a_url_and_a_space_separated_string(idp, idp_client):
    kid = idp.new_key()
    client = await idp_client(role_claim="https://aiagent.example.com/roles")
    token = idp.token(kid, **{"https://aiagent.example.com/roles": "reader worker"})
    execution = await create_execution(client, token_for("owner"))
    path = f"/api/v1/executions/{execution['id']}"
    status, _ = await request(client, "PATCH", path, token, json={"progress": 7})
    assert status == 200


# -- rotation, floods, an unavailable provider ------------------------------------------------

async def test_a_key_rotated_while_sockets_are_open(idp, idp_client):
    old_kid = idp.new_key("RS256")
    client = await idp_client(jwks_min_refetch_seconds=0.1)
    alice = idp.token(old_kid, sub="alice")
    expiring = idp.token(old_kid, sub="alice", ttl=3)
    worker = token_for("worker", "worker")
    execution = await create_execution(client, alice)
    path = f"/api/v1/ws/executions/{execution['id']}"
    async with client.ws_connect(path, params={"access_token": alice}) as long_lived, \
            client.ws_connect(path, params={"access_token": expiring}) as short_lived:
        for ws in (long_lived, short_lived):
            assert (await next_status(ws))["progress"] == 0

        # The provider rotates: a new key, the old one withdrawn.
        new_kid = idp.new_key("ES256")
        idp.publish_only(new_kid)
        await asyncio.sleep(0.15)
        fetches = idp.fetches
        fresh = idp.token(new_kid, sub="alice")
        assert (await request(client, "GET", f"/api/v1/executions/{execution['id']}", fresh))[0] == 200
        assert idp.fetches == fetches + 1, "the unknown kid fetched the JWKS once"
        status, body = await request(client, "GET", f"/api/v1/executions/{execution['id']}", alice)
        assert (status, body["error"]["message"]) == (401, "unknown signing key")

        # Sockets opened with the old key's tokens keep working...
        await request(client, "PATCH", f"/api/v1/executions/{execution['id']}", worker, json={"progress": 30})
        for ws in (long_lived, short_lived):
            assert (await next_status(ws))["progress"] == 30
        # ...one takes a token of the new key in force, on the open socket...
        await long_lived.send_json({"type": "auth", "token": fresh})
        assert (await next_json(long_lived))["type"] == "auth_ok"
        # ...and the other closes when its token expires, as any socket does.
        msg = await short_lived.receive(timeout=6)
        assert (msg.type, short_lived.close_code, msg.extra) == (WSMsgType.CLOSE, 4401, "token expired")
        await request(client, "PATCH", f"/api/v1/executions/{execution['id']}", worker, json={"progress": 60})
        assert (await next_status(long_lived))["progress"] == 60

    async with client.ws_connect(path, params={"access_token": alice}) as ws:
        assert await closed_with(ws) == 4401


async def test_a_flood_of_unknown_key_ids_fetches_the_jwks_a_bounded_number_of_times(idp, idp_client):
    idp.new_key("RS256")
    client = await idp_client(jwks_min_refetch_seconds=1.0)
    stranger = IdentityProvider()
    forged = [stranger.new_key("ES256") for _ in range(3)]

    async def attempt(i: int) -> int:
        token = stranger.token(forged[i % 3], role="admin")
        if i % 4 == 0:
            async with client.ws_connect("/api/v1/ws", params={"access_token": token}) as ws:
                return await closed_with(ws)
        return (await request(client, "GET", "/api/v1/executions", token))[0]

    # All at once, right after the start's fetch: none fetches again.
    answers = await asyncio.gather(*(attempt(i) for i in range(120)))
    assert set(answers) <= {401, 4401} and idp.fetches == 1
    # Then for 2.5 s without pause, 20 at a time: at most one fetch a second.
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < 2.5:
        answers = await asyncio.gather(*(attempt(i) for i in range(count, count + 20)))
        assert set(answers) <= {401, 4401}
        count += 20
    assert count >= 100 and idp.fetches <= 1 + 3, idp.fetches


async def test_an_unavailable_provider_refuses_new_keys_and_keeps_known_ones(idp, idp_client):
    kid = idp.new_key("ES256")
    idp.status = 503
    client = await idp_client(jwks_min_refetch_seconds=0.2, jwks_cache_seconds=0.3)
    status, body = await request(client, "GET", "/api/v1/executions", idp.token(kid))
    assert (status, body["error"]["message"]) == (401, "unknown signing key")
    idp.status = 200
    await asyncio.sleep(0.25)
    assert (await request(client, "GET", "/api/v1/executions", idp.token(kid)))[0] == 200
    # Down again, and the keys in hand are stale: they still serve while the refresh fails.
    idp.status = 500
    await asyncio.sleep(0.4)
    fetches = idp.fetches
    for _ in range(3):
        assert (await request(client, "GET", "/api/v1/executions", idp.token(kid)))[0] == 200
    await asyncio.sleep(0.05)
    assert idp.fetches == fetches + 1, "one background refresh was tried"


async def test_a_slow_provider_does_not_stall_other_requests(idp, idp_client):
    kid = idp.new_key("RS256")
    idp.delay = 1.0
    started = time.monotonic()
    client = await idp_client()
    assert time.monotonic() - started < 0.8, "the start waited for the JWKS"
    waiting = asyncio.create_task(request(client, "GET", "/api/v1/executions", idp.token(kid)))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert (await request(client, "GET", "/api/v1/executions", token_for("someone")))[0] == 200
    assert time.monotonic() - started < 0.5, "an HS256 request waited for the JWKS fetch"
    assert not waiting.done()
    assert (await waiting)[0] == 200


# -- hostile tokens ---------------------------------------------------------------------------

def b64(data: bytes | str) -> str:
    return base64.urlsafe_b64encode(data.encode() if isinstance(data, str) else data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict, signature: bytes = b"sig") -> str:
    return f"{b64(json.dumps(header))}.{b64(json.dumps(payload))}.{b64(signature)}"


def hostile_tokens(idp: IdentityProvider, rsa_kid: str, ec_kid: str, trap_url: str) -> dict[str, str]:
    claims = {"sub": "mallory", "role": "admin", "exp": int(time.time()) + 600}
    public_pem = idp.private_keys[rsa_kid].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    confused_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': rsa_kid}))}.{b64(json.dumps(claims))}"
    stranger = IdentityProvider()
    stranger_kid = stranger.new_key("RS256", publish=False)
    stranger_key = stranger.private_keys[stranger_kid]
    stranger_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(stranger_key.public_key(), as_dict=True)
    confused_signature = hmac.new(public_pem, confused_input.encode(), hashlib.sha256).digest()
    valid_rs = idp.token(rsa_kid, **claims)
    head, body, signature = valid_rs.split(".")
    return {
        "not a JWT": "garbage",
        "three empty parts": "..",
        "header not JSON": f"{b64('not json')}.{b64('{}')}.c2ln",
        "header nested 3000 deep": f"{b64('[' * 3000)}.{b64('{}')}.c2ln",
        "kid a list": unsigned({"alg": "RS256", "kid": [rsa_kid]}, claims),
        "kid an object": unsigned({"alg": "RS256", "kid": {"$ne": None}}, claims),
        "no kid": jwt.encode(claims, idp.private_keys[rsa_kid], algorithm="RS256"),
        "alg a list": unsigned({"alg": ["RS256"], "kid": rsa_kid}, claims),
        "alg none": unsigned({"alg": "none", "kid": rsa_kid}, claims, b""),
        "alg not allowed (RS512)": jwt.encode(claims, idp.private_keys[rsa_kid], algorithm="RS512",
                                               headers={"kid": rsa_kid}),
        "HS256 with the public key as secret": f"{confused_input}.{b64(confused_signature)}",
        "RS256 naming the EC key": unsigned({"alg": "RS256", "kid": ec_kid}, claims, os.urandom(256)),
        "random RSA signature": f"{head}.{body}.{b64(os.urandom(256))}",
        "ES256 signature too short": f"{idp.token(ec_kid, **claims).rsplit('.', 1)[0]}.{b64(os.urandom(7))}",
        "payload swapped": f"{head}.{b64(json.dumps({**claims, 'sub': 'someone-else'}))}.{signature}",
        "its own key in the header (jwk)": jwt.encode(claims, stranger_key, algorithm="RS256",
                                                      headers={"kid": stranger_kid, "jwk": stranger_jwk}),
        "a key URL in the header (jku)": jwt.encode(claims, stranger_key, algorithm="RS256",
                                                    headers={"kid": rsa_kid, "jku": trap_url}),
        "expired": idp.token(rsa_kid, ttl=-60),
        "exp a string": idp.token(rsa_kid, exp="tomorrow"),
        "sub a number": jwt.encode({**claims, "sub": 12345}, idp.private_keys[rsa_kid], algorithm="RS256",
                                   headers={"kid": rsa_kid}),
        "no role": jwt.encode({"sub": "m", "exp": claims["exp"]}, idp.private_keys[rsa_kid],
                              algorithm="RS256", headers={"kid": rsa_kid}),
        "role an object": idp.token(rsa_kid, role={"admin": True}),
        "huge kid": unsigned({"alg": "ES256", "kid": "k" * 5000}, claims),
    }


async def test_hostile_tokens_get_401_and_4401_never_a_500(idp, idp_client, aiohttp_server):
    trap_hits = []

    async def trap_keys(request):
        trap_hits.append(request.path)
        return web.json_response({"keys": []})

    trap = web.Application()
    trap.router.add_get("/keys", trap_keys)
    trap_url = str((await aiohttp_server(trap)).make_url("/keys"))
    rsa_kid, ec_kid = idp.new_key("RS256"), idp.new_key("ES256")
    client = await idp_client(jwks_min_refetch_seconds=0)
    owner = idp.token(rsa_kid, sub="owner")
    execution = await create_execution(client, owner)
    async with client.ws_connect("/api/v1/ws", params={"access_token": owner}) as refreshing:
        for name, token in hostile_tokens(idp, rsa_kid, ec_kid, trap_url).items():
            status, body = await request(client, "GET", f"/api/v1/executions/{execution['id']}", token)
            assert status == 401 and body["error"]["code"] == "unauthorized", (name, status, body)
            for path in (f"/api/v1/ws/executions/{execution['id']}", "/api/v1/ws"):
                async with client.ws_connect(path, params={"access_token": token}) as ws:
                    assert await closed_with(ws) == 4401, name
            await refreshing.send_json({"type": "auth", "token": token})
            reply = await next_json(refreshing)
            assert reply["type"] == "error" and reply["message"].startswith("auth refused"), (name, reply)
        await refreshing.send_json({"type": "ping"})
        assert await next_json(refreshing) == {"type": "pong"}, "the socket and its token survived"
    assert trap_hits == [], "a key URL in a token is never fetched"


async def test_keys_the_service_cannot_use_are_skipped_not_fatal(idp, idp_client):
    kid = idp.new_key("ES256")
    good = idp.published[0]
    idp.published = [
        {"kty": "oct", "kid": "shared", "k": b64(b"a-symmetric-key-must-never-verify-tokens")},
        {**good, "kid": "for-encryption", "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "EC", "kid": "odd-curve", "crv": "P-999", "x": "AA", "y": "AA"},
        "not an object",
        good,
    ]
    client = await idp_client()
    assert (await request(client, "GET", "/api/v1/executions", idp.token(kid)))[0] == 200
    claims = {"sub": "m", "role": "admin", "exp": int(time.time()) + 60}
    hs_with_published_secret = jwt.encode(claims, b"a-symmetric-key-must-never-verify-tokens", "HS256",
                                          headers={"kid": "shared"})
    assert (await request(client, "GET", "/api/v1/executions", hs_with_published_secret))[0] == 401


async def test_a_jwks_that_is_not_one_is_a_failed_fetch(idp, idp_client, aiohttp_server):
    kid = idp.new_key()
    for body in (b"not json", b'{"keys": "no"}', b"[]", b'{"keys": []}', b"[" * 100_000, b" " * 1_100_000):
        async def serve(request, body=body):
            return web.Response(body=body)

        app = web.Application()
        app.router.add_get("/jwks.json", serve)
        url = str((await aiohttp_server(app)).make_url("/jwks.json"))
        client = await idp_client(jwks_url=url)
        status, reply = await request(client, "GET", "/api/v1/executions", idp.token(kid))
        assert (status, reply["error"]["message"]) == (401, "unknown signing key"), body[:20]


# -- configuration and the process ------------------------------------------------------------

@pytest.mark.parametrize("url, accepted", [
    ("https://idp.example.com/.well-known/jwks.json", True),
    ("http://127.0.0.1:8080/jwks", True),
    ("http://localhost/jwks", True),
    ("http://[::1]:9000/jwks", True),
    ("http://idp.example.com/jwks", False),  # keys fetched in the clear could be swapped
    ("http://10.0.0.5/jwks", False),
    ("ftp://idp.example.com/jwks", False),
    ("https:///jwks", False),
    ("idp.example.com", False),
])
def test_a_jwks_url_is_https_unless_on_this_machine(url, accepted):
    if accepted:
        assert load_config(environ={"JWKS_URL": url}).jwks_url == url
    else:
        refusal = (r"^jwks_url = .*environment variable JWKS_URL.*allowed: empty, an https:// URL, or "
                   r"http:// to a loopback address")
        with pytest.raises(ConfigError, match=refusal):
            load_config(environ={"JWKS_URL": url})


def test_algorithms_are_asymmetric_ones_only():
    jwks = {"JWKS_URL": "https://idp.example.com/jwks"}
    assert load_config(environ={**jwks, "JWT_ALGORITHMS": "rs256, es256 PS256"}).jwt_algorithms == (
        "RS256", "ES256", "PS256")
    for refused in ("HS256", "none", "RS256 HS512", ""):
        with pytest.raises(ConfigError, match="^jwt_algorithms = .*allowed: a list of RS256, RS384"):
            load_config(environ={**jwks, "JWT_ALGORITHMS": refused})


def test_a_role_map_maps_names_to_roles():
    jwks = {"JWKS_URL": "https://idp.example.com/jwks"}
    config = load_config(environ={**jwks, "ROLE_MAP": "agent-admin=admin, agent-ops=worker"})
    assert config.role_map == ("agent-admin=admin", "agent-ops=worker")
    for refused in ("agent-admin=root", "agent-admin", "=admin", "a=admin a=user"):
        with pytest.raises(ConfigError, match='^role_map = .*allowed: a list of "name=role"'):
            load_config(environ={**jwks, "ROLE_MAP": refused})


@pytest.mark.parametrize("variable, value", [
    ("JWT_ISSUER", "https://idp.example.com/"), ("JWT_AUDIENCE", "aiagent-live"), ("ROLE_CLAIM", "groups"),
    ("ROLE_MAP", "a=admin"), ("JWT_ALGORITHMS", "ES256"), ("JWKS_CACHE_SECONDS", "60"),
])
def test_identity_provider_settings_need_a_jwks_url(variable, value):
    refusal = rf"^{variable.lower()} \(environment variable {variable}\) needs jwks_url"
    with pytest.raises(ConfigError, match=refusal):
        load_config(environ={variable: value})
    # Restating a default is no mistake.
    load_config(environ={"ROLE_CLAIM": "role"})


def test_a_database_needs_a_secret_or_a_jwks_url():
    with pytest.raises(ConfigError, match="JWT_SECRET or JWKS_URL"):
        with_development_defaults(Config(database_url="postgresql://db/aiagent"))
    only_jwks = Config(database_url="postgresql://db/aiagent", jwks_url="https://idp.example.com/jwks")
    assert with_development_defaults(only_jwks) == only_jwks


async def test_a_process_with_only_a_jwks_url_serves_the_providers_tokens(database_url, idp, tmp_path):
    kid = idp.new_key("ES256")
    with open(tmp_path / "server.log", "wb") as log_file:
        process, port = await start_server(database_url, log_file, JWT_SECRET="", JWKS_URL=idp.url)
    try:
        async with aiohttp.ClientSession() as session:
            for token, expected in ((idp.token(kid, role="admin"), 200), (token_for("someone"), 401)):
                url = f"http://127.0.0.1:{port}/api/v1/executions"
                async with session.get(url, headers=auth(token)) as response:
                    assert response.status == expected
        token_command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "token", "--sub", "a", "--role", "user",
            env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": "", "JWKS_URL": idp.url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await token_command.communicate()
        assert (token_command.returncode, out) == (2, b"")
        assert b"JWT_SECRET is not set" in err
    finally:
        process.terminate()
        await process.wait()
    logs = (tmp_path / "server.log").read_text()
    assert '"event": "jwks.fetched"' in logs and kid in logs
