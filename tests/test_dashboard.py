"""The dashboard's page and static files, and the development token it may carry."""

from service.api.dashboard_handlers import dev_token_key
from service.app import create_app

from .actors import token_for

DEV_META = 'name="aiagent-dev-token"'


async def test_page_and_client_need_no_token(client):
    response = await client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    assert '<script type="module" src="/static/dashboard.js">' in page
    assert DEV_META not in page, "no development token unless the server runs in development mode"
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    for path, kind in [("/static/live-client.js", "javascript"), ("/static/dashboard.js", "javascript"),
                       ("/static/dashboard.css", "text/css")]:
        response = await client.get(path)
        assert response.status == 200 and kind in response.content_type, path
    response = await client.get("/static/../setup.cfg")
    assert response.status in (403, 404)
    response = await client.get("/api/v1/executions")
    assert response.status == 401, "the API still needs a token"


async def test_development_token_only_for_a_browser_on_this_machine(aiohttp_client, config):
    app = create_app(config)
    token = token_for("developer", "admin")
    app[dev_token_key] = token
    client = await aiohttp_client(app)
    page = await (await client.get("/")).text()
    assert f'<meta name="aiagent-dev-token" content="{token}">' in page
    # Another site whose name resolves to 127.0.0.1 (DNS rebinding) reads the page under its name.
    page = await (await client.get("/", headers={"Host": "attacker.example:8037"})).text()
    assert DEV_META not in page and token not in page
    # Through a proxy on this machine the connection comes from 127.0.0.1, whoever the visitor is,
    # and the Host is the visitor's to choose.
    for proxied in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"},
                    {"X-Real-IP": "203.0.113.7"}):
        page = await (await client.get("/", headers={"Host": "localhost", **proxied})).text()
        assert DEV_META not in page and token not in page, proxied

