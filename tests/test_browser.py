"""The dashboard and live-client.js in a real browser: headless Chromium driven by Playwright,
against real `python -m service serve` processes, with a worker writing plain SQL; and the
README's plain-JS and Vue examples on a front end's own origin, in development and production.

Needs Debian's `chromium` (`make test` installs it); without a browser these tests fail, they do not
skip. A screenshot of the dashboard mid-run lands in test-output/."""

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from service.auth import issue_token
from service.db.migrations import apply_migrations
from service.dev.embedded_db import development_secret

from .actors import JWT_SECRET, token_for
from .databases import empty_database
from .helpers import log_events
from .servers import free_port, wait_ready

pytestmark = pytest.mark.both_change_sources

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
TIMEOUT_MS = 10_000


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium for the browser tests: install Debian's package "
                    "(apt-get update && apt-get install -y chromium; make test does this), or set CHROMIUM",
                    pytrace=False)
    return path


class ServerProcess:
    """`python -m service serve` on a fixed port, so it can be stopped and started again there."""

    def __init__(self, database_url: str, log_path: Path, change_source: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET,
                    "PORT": str(self.port), "LOG_FORMAT": "json", "CHANGE_SOURCE": change_source}
        self.log = open(log_path, "ab")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=self.env,
                                        stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        try:
            wait_ready(self.base, self.process)
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM: sockets get 1001, the process exits."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        self.log.close()


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, change_source):
    process = ServerProcess(database_url, tmp_path_factory.mktemp("browser") / "server.log", change_source)
    process.start()
    yield process
    process.close()


@pytest.fixture
async def browser():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]'", pytrace=False)
    executable = chromium_path()
    playwright = await async_playwright().start()
    try:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
    except Exception as exc:
        await playwright.stop()
        pytest.fail(f"Chromium at {executable} did not start: {exc}", pytrace=False)
    yield browser
    await browser.close()
    await playwright.stop()


@pytest.fixture
async def page(browser):
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    await context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def expect(locator):
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(locator)


async def sign_in(page, base: str, token: str, path: str = "/") -> None:
    await page.goto(base + path)
    await page.fill("#token-input", token)
    await page.click("#token-form button")


class Api:
    """The REST calls a test needs, as one user."""

    def __init__(self, base: str, sub: str, role: str = "user"):
        self.base = base
        self.sub = sub
        self.token = token_for(sub, role)

    async def call(self, method: str, path: str, body=None) -> dict:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as session:
            async with session.request(method, self.base + path, json=body) as response:
                assert response.status < 300, await response.text()
                return await response.json()

    async def execution(self, nodes=("plan", "search", "review")) -> dict:
        workflow = await self.call("POST", "/api/v1/workflows", {
            "name": f"browser {uuid.uuid4().hex[:6]}", "nodes": [{"id": n, "title": n.title()} for n in nodes]})
        return await self.call("POST", "/api/v1/executions", {"workflow_id": workflow["id"], "input_data": {"q": 1}})


async def run_sql(sql, statement: str, *params) -> None:
    await sql.execute(statement, params)


async def test_dashboard_shows_an_execution_going_from_pending_to_completed_as_its_rows_change_in_sql(
        server, page, sql):
    api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
    execution = await api.execution()
    eid = execution["id"]
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await sign_in(page, server.base, api.token)

    row = page.locator(f'#executions tr[data-id="{eid}"]')
    await expect(row).to_have_attribute("data-status", "pending")
    await expect(page.locator("#feed-state")).to_have_attribute("data-state", "live")
    await row.locator("a").click()
    await expect(page.locator("#detail-state")).to_have_attribute("data-state", "live")
    nodes = page.locator("#nodes li")
    await expect(nodes).to_have_count(3)
    assert await nodes.evaluate_all("lis => lis.map(li => li.dataset.status)") == ["pending"] * 3

    node = "UPDATE execution_nodes SET status=%s WHERE execution_id=%s AND node_id=%s"
    await run_sql(sql, "UPDATE executions SET status='running', message='planning' WHERE id=%s", eid)
    await run_sql(sql, node, "running", eid, "plan")
    await run_sql(sql, "INSERT INTO execution_logs (execution_id, node_id, message) VALUES (%s, 'plan', 'thinking')", eid)
    await run_sql(sql, node, "completed", eid, "plan")
    await run_sql(sql, node, "running", eid, "search")

    await expect(row).to_have_attribute("data-status", "running")
    await expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "33")
    await expect(page.locator("#detail-progress")).to_have_attribute("aria-valuenow", "33")
    await expect(page.locator("#detail-status")).to_have_text("running")
    await expect(page.locator("#detail-message")).to_have_text("planning")
    await expect(nodes.nth(0)).to_have_attribute("data-status", "completed")
    await expect(nodes.nth(1)).to_have_attribute("data-status", "running")
    await expect(page.locator("#log li .log-text")).to_have_text(["thinking"])
    await page.wait_for_timeout(400)  # the bars' width transition
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=OUTPUT / "dashboard-mid-run.png")

    await run_sql(sql, node, "completed", eid, "search")
    await run_sql(sql, node, "running", eid, "review")
    await run_sql(sql, node, "completed", eid, "review")
    await run_sql(sql, "UPDATE executions SET status='completed', result='{\"answer\": 42}' WHERE id=%s", eid)

    await expect(row).to_have_attribute("data-status", "completed")
    await expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("#detail-progress")).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("#detail-result pre")).to_contain_text('"answer": 42')
    await expect(page.locator("#detail-state")).to_have_attribute("data-state", "finished")
    assert await nodes.evaluate_all("lis => lis.map(li => li.dataset.status)") == ["completed"] * 3
    await expect(page.locator("#cancel-button")).to_be_hidden()
    await asyncio.sleep(1)
    assert len([url for url in sockets if eid in url]) == 1, "one socket, never reopened after the end"


async def test_log_view_gets_every_line_in_order_across_a_server_restart(
        database_url, browser, sql, tmp_path, change_source):
    server = ServerProcess(database_url, tmp_path / "server.log", change_source)
    server.start()
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
        eid = (await api.execution())["id"]
        await run_sql(sql, "UPDATE executions SET status='running' WHERE id=%s", eid)
        await sign_in(page, server.base, api.token, f"/#/executions/{eid}")
        await expect(page.locator("#detail-state")).to_have_attribute("data-state", "live")

        log = "INSERT INTO execution_logs (execution_id, message) VALUES (%s, %s)"
        lines = [f"line {i:03}" for i in range(90)]
        for text in lines[:30]:
            await run_sql(sql, log, eid, text)
        await expect(page.locator("#log li")).to_have_count(30)

        # The server goes away (1001) while lines keep coming; a new process takes its place.
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
        for text in lines[30:60]:
            await run_sql(sql, log, eid, text)
            await asyncio.sleep(0.01)
        await stopping
        await expect(page.locator("#detail-state")).to_have_attribute("data-state", "reconnecting")
        await asyncio.get_running_loop().run_in_executor(None, server.start)
        for text in lines[60:]:
            await run_sql(sql, log, eid, text)
        await run_sql(sql, "UPDATE executions SET status='completed' WHERE id=%s", eid)

        await expect(page.locator("#detail-state")).to_have_attribute("data-state", "finished", timeout=20_000)
        shown = await page.locator("#log li .log-text").all_inner_texts()
        seqs = await page.locator("#log li").evaluate_all("lis => lis.map(li => Number(li.dataset.seq))")
        assert shown == lines, "every line, in order, none twice"
        assert seqs == sorted(set(seqs))
        await expect(page.locator("#detail-resumed")).to_be_visible()
        await expect(page.locator("#detail-resumed")).to_contain_text("resumed from seq")
        connections = await page.evaluate("aiagentLive.detail.watcher.connections")
        assert connections >= 2
    finally:
        await page.context.close()
        server.close()


async def test_a_finished_execution_is_shown_and_the_client_stops_reconnecting(server, page, sql):
    api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
    eid = (await api.execution())["id"]
    await run_sql(sql, "UPDATE executions SET status='running' WHERE id=%s", eid)
    await run_sql(sql, "UPDATE executions SET status='failed', error='boom' WHERE id=%s", eid)
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url) if eid in ws.url else None)
    await sign_in(page, server.base, api.token, f"/#/executions/{eid}")
    await expect(page.locator("#detail-state")).to_have_attribute("data-state", "finished")
    await expect(page.locator("#detail-status")).to_have_text("failed")
    await expect(page.locator("#detail-error pre")).to_have_text("boom")
    await asyncio.sleep(2.5)  # longer than the first few backoff delays
    assert len(sockets) == 1, sockets
    assert await page.evaluate("[aiagentLive.detail.watcher.state, aiagentLive.detail.watcher.connections]") == [
        "finished", 1]


async def test_a_bad_token_shows_a_clear_message(server, page):
    await page.goto(server.base + "/")
    # A served process on a DATABASE_URL is production mode: no token in the page, none prefilled.
    await expect(page.locator('meta[name="aiagent-dev-token"]')).to_have_count(0)
    await expect(page.locator("#token-input")).to_have_value("")
    await expect(page.locator("#banner")).to_contain_text("Paste a bearer token to begin")

    forged = token_for("mallory", "admin").rsplit(".", 1)[0] + ".not-the-signature"
    await sign_in(page, server.base, forged)
    banner = page.locator("#banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("The server refused this token (invalid token)")
    await expect(page.locator("#token-input")).to_have_class("invalid")

    await page.fill("#token-input", "garbage")
    await page.click("#token-form button")
    await expect(banner).to_contain_text("refused this token (not a JWT)")


LIVE_CLIENT_PROBE = """
async ([base, eid, good, bad]) => {
  const { watchExecution } = await import('/static/live-client.js');
  const until = (watcher, states) => new Promise((resolve) => {
    const check = () => states.includes(watcher.state) ? resolve() : setTimeout(check, 20);
    check();
  });
  const results = {};

  // A refused token, nothing to refresh it with: one try, a clear error, no loop.
  let errors = [];
  let w = watchExecution(eid, { baseUrl: base, token: bad, onError: (e) => errors.push(e) });
  await until(w, ['failed']);
  await new Promise((r) => setTimeout(r, 1200));
  results.refused = { state: w.state, connections: w.connections, errors: errors.map((e) => [e.code, e.message, e.fatal]) };

  // 4401, then getToken() hands over a good one: reconnected and live.
  let handed = 0;
  w = watchExecution(eid, { baseUrl: base, token: bad, getToken: () => { handed += 1; return good; } });
  await until(w, ['live']);
  results.renewed = { state: w.state, connections: w.connections, handed };
  w.close();

  // No such execution: 4404, no reconnect.
  errors = [];
  w = watchExecution(crypto.randomUUID(), { baseUrl: base, token: good, onError: (e) => errors.push(e) });
  await until(w, ['failed']);
  await new Promise((r) => setTimeout(r, 1200));
  results.missing = { state: w.state, connections: w.connections, code: errors[0].code };
  return results;
}
"""

REFRESH_PROBE = """
async ([base, eid, good, shortLived]) => {
  // A token about to expire, refreshed through {"type": "auth"} before it does.
  const { watchExecution } = await import('/static/live-client.js');
  let fresh = 0;
  const w = watchExecution(eid, { baseUrl: base, token: shortLived, refreshBeforeExpiryMs: 2500,
                                  getToken: () => { fresh += 1; return good; } });
  await new Promise((r) => setTimeout(r, 5000));
  const result = { state: w.state, connections: w.connections, fresh };
  w.close();
  return result;
}
"""


async def test_live_client_stops_on_4401_and_4404_and_renews_tokens(server, page):
    api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
    eid = (await api.execution())["id"]
    await page.goto(server.base + "/static/live-client.js")  # same origin as the API, no dashboard
    bad = token_for("someone-else", "user")[:-4] + "AAAA"
    results = await page.evaluate(LIVE_CLIENT_PROBE, [server.base, eid, api.token, bad])
    assert results["refused"] == {"state": "failed", "connections": 1,
                                  "errors": [[4401, "invalid token", True]]}, results
    assert results["renewed"] == {"state": "live", "connections": 2, "handed": 1}, results
    assert results["missing"] == {"state": "failed", "connections": 1, "code": 4404}, results
    # Expires in 3 to 4 s (exp is whole seconds); the socket outlives it on the same connection.
    refreshed = await page.evaluate(REFRESH_PROBE, [server.base, eid, api.token, token_for(api.sub, ttl=4)])
    assert refreshed == {"state": "live", "connections": 1, "fresh": 1}, refreshed


# -- front ends on their own origin ----------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(language: str, after: str) -> str:
    """The README's first ```language block after the text `after`: the examples are run as a
    reader copies them."""
    text = README.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start:text.index("```\n", start)]


@contextlib.asynccontextmanager
async def front_end(routes):
    """A front end's own web server (where a Vite dev server would be), on another origin than
    the service's; yields its origin."""
    app = web.Application()
    app.router.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def html_page(text: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html")
    return handler


@pytest.fixture(scope="module")
def development_server(tmp_path_factory):
    """`make run`'s server: no DATABASE_URL and no JWT_SECRET, so it starts an embedded PostgreSQL
    of its own in its data_dir and runs in development mode. `token` is a development token, as
    `make run` prints (signed with the secret it keeps in data_dir)."""
    data_dir = tmp_path_factory.mktemp("development")
    process = ServerProcess("", data_dir / "server.log", "notify")
    for name in ("DATABASE_URL", "JWT_SECRET", "ALLOWED_ORIGINS", "AIAGENT_CONFIG"):
        process.env.pop(name, None)
    process.env["DATA_DIR"] = str(data_dir)
    process.start()
    process.token = issue_token(development_secret(data_dir), "developer", "admin", 3600)
    yield process
    process.close()


def development_api(server) -> Api:
    api = Api(server.base, "developer")
    api.token = server.token
    return api


async def until(predicate, timeout: float = TIMEOUT_MS / 1000) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.05)


def refusals_logged(log_path: Path, origin: str) -> int:
    return len([e for e in log_events(log_path)
                if e.get("event") == "origin.refused" and e["origin"] == origin])


async def test_readme_plain_js_example_works_from_another_loopback_origin_in_development(
        development_server, page):
    # The README's example as it stands, on a front end's origin (127.0.0.1:<its port>) importing
    # the client from the service (localhost:<port>): a module script from another origin, then
    # the socket and a token fetched from its own server, with no configuration at all.
    server = development_server
    api = development_api(server)
    eid = (await api.execution(nodes=("plan", "answer")))["id"]
    service = f"http://localhost:{server.port}"
    example = readme_block("html", "Plain JavaScript, the original design's example")
    assert "http://localhost:8037/static/live-client.js" in example
    around = f"""<!doctype html><meta charset="utf-8"><title>a front end</title>
<script>
  // What the README's example leaves to the app around it.
  window.executionId = {json.dumps(eid)};
  window.shown = {{}};
  window.displayResult = (result) => {{ window.shown.result = result; }};
  window.displayError = (error) => {{ window.shown.error = error; }};
  window.showError = (message) => {{ window.shown.fatal = message; }};
</script>
"""

    async def live_token(request: web.Request) -> web.Response:
        return web.Response(text=server.token)  # the app's own token endpoint

    console = []
    page.on("console", lambda message: console.append(message.text))
    routes = [web.get("/", html_page(around + example.replace("http://localhost:8037", service))),
              web.get("/my-app/live-token", live_token)]
    async with front_end(routes) as origin:
        await page.goto(origin + "/")
        await expect(page.locator("#status")).to_have_text("pending")
        await api.call("PATCH", f"/api/v1/executions/{eid}", {"status": "running", "progress": 40})
        await api.call("POST", f"/api/v1/executions/{eid}/logs", {"message": "thinking", "node_id": "plan"})
        await expect(page.locator("#status")).to_have_text("running")
        await expect(page.locator("#progress")).to_have_attribute("style", "width: 40%;")
        await expect(page.locator("#log")).to_contain_text("thinking")
        await api.call("PATCH", f"/api/v1/executions/{eid}",
                       {"status": "completed", "result": {"answer": 42}})
        await expect(page.locator("#status")).to_have_text("completed")
        await until(lambda: any(text.startswith("finished") for text in console))
    assert await page.evaluate("window.shown") == {"result": {"answer": 42}}
    assert refusals_logged(Path(server.log.name), origin) == 0


async def test_readme_vue_component_on_use_execution_follows_an_execution_and_cleans_up(
        development_server, page, client_package):
    # The README's Vue component: its template as it stands, its <script setup> as setup(), with
    # vue and the package from the front end's server through an import map (what a bundler does).
    server = development_server
    api = development_api(server)
    first = (await api.execution(nodes=("plan", "answer")))["id"]
    second = (await api.execution(nodes=("plan",)))["id"]
    component = readme_block("vue", "Vue 3, the platform's component")
    template = component[component.index("<template>") + 10:component.index("</template>")]
    assert "useExecution(" in component and "@aiagent-live/client/vue" in component
    setup = {"service": f"http://localhost:{server.port}", "first": first, "template": template}
    vue_page = f"""<!doctype html><meta charset="utf-8"><title>a Vue front end</title>
<script type="importmap">
  {{"imports": {{"vue": "/npm/vue/dist/vue.esm-browser.prod.js",
                "@aiagent-live/client/vue": "/client/use-execution.js"}}}}
</script>
<div id="app"></div>
<script>window.setup = {json.dumps(setup)};</script>
<script type="module">
  import {{ createApp, ref }} from 'vue';
  import {{ useExecution }} from '@aiagent-live/client/vue';

  const ExecutionView = {{
    props: {{ executionId: String }},
    setup: (props) => useExecution(() => props.executionId, {{
      baseUrl: setup.service,
      getToken: () => fetch('/my-app/live-token').then((r) => r.text()),
    }}),
    template: setup.template,
  }};
  const shown = ref(setup.first);
  const mounted = ref(true);
  createApp({{
    components: {{ ExecutionView }},
    setup: () => ({{ shown, mounted }}),
    template: '<ExecutionView v-if="mounted" :execution-id="shown" />',
  }}).mount('#app');
  window.view = {{ show: (id) => {{ shown.value = id; }}, unmount: () => {{ mounted.value = false; }} }};
</script>
"""

    async def live_token(request: web.Request) -> web.Response:
        return web.Response(text=server.token)

    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))

    def sockets_of(eid: str) -> list:
        return [ws for ws in sockets if eid in ws.url]

    view = page.locator("#app")
    routes = [web.get("/", html_page(vue_page)), web.get("/my-app/live-token", live_token),
              web.static("/client", client_package), web.static("/npm", client_package / "node_modules")]
    async with front_end(routes) as origin:
        await page.goto(origin + "/")
        await expect(view).to_contain_text("Status: pending (live)")
        await expect(view.locator("li")).to_have_text(["Plan: pending", "Answer: pending"])

        await api.call("PATCH", f"/api/v1/executions/{first}", {"status": "running", "progress": 40})
        await api.call("PATCH", f"/api/v1/executions/{first}/nodes/plan", {"status": "running"})
        await api.call("POST", f"/api/v1/executions/{first}/logs", {"message": "thinking", "node_id": "plan"})
        await expect(view).to_contain_text("Status: running (live)")
        await expect(view).to_contain_text("Progress: 40%")
        await expect(view.locator(".bar")).to_have_attribute("style", "width: 40%;")
        await expect(view.locator("li")).to_have_text(["Plan: running", "Answer: pending"])
        await expect(view.locator("pre")).to_have_text("thinking")

        # Another id: the first execution's socket is closed, the second one's watched.
        await page.evaluate("id => view.show(id)", second)
        await expect(view).to_contain_text("Status: pending (live)")
        await expect(view.locator("li")).to_have_text(["Plan: pending"])
        await until(lambda: sockets_of(first)[0].is_closed())
        await api.call("PATCH", f"/api/v1/executions/{second}", {"status": "running"})
        await api.call("PATCH", f"/api/v1/executions/{second}",
                       {"status": "completed", "result": {"answer": 42}})
        await expect(view).to_contain_text("Status: completed (finished)")
        await expect(view).to_contain_text('"answer": 42')
        await expect(view).to_contain_text("Progress: 100%")

        # Back to the first, still running: its state and log again, from a fresh snapshot.
        await page.evaluate("id => view.show(id)", first)
        await expect(view).to_contain_text("Status: running (live)")
        await expect(view.locator("pre")).to_have_text("thinking")
        assert len(sockets_of(first)) == 2 and not sockets_of(first)[1].is_closed()

        # Unmounted: its socket is closed, and nothing reopens it.
        await page.evaluate("view.unmount()")
        await until(lambda: sockets_of(first)[1].is_closed())
        await asyncio.sleep(1)
        assert len(sockets) == 3, [ws.url for ws in sockets]


REFUSED_ORIGIN_PROBE = """
async ([service, eid, token]) => {
  // A page on an origin the service does not allow: the module loads (it is public), the socket
  // is refused; the client asks why, reports it as fatal and stops.
  const { watchExecution } = await import(`${service}/static/live-client.js`);
  const errors = [];
  const states = [];
  const w = watchExecution(eid, { token, onError: (e) => errors.push(e), onState: (s) => states.push(s) });
  for (let waited = 0; waited < 5000 && !['failed', 'live'].includes(w.state); waited += 20) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 1500)); // longer than the first backoff steps
  w.close();
  return { state: w.state, connections: w.connections, states,
           errors: errors.map((e) => [e.code, e.fatal, e.message]) };
}
"""


async def test_a_refused_origin_reaches_on_error_as_fatal_with_the_reason_in_production(server, page):
    api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
    eid = (await api.execution())["id"]
    async with front_end([web.get("/", html_page("<!doctype html><title>elsewhere</title>"))]) as origin:
        await page.goto(origin + "/")
        for _ in range(2):  # the same page twice: refused twice, logged once
            refused = await page.evaluate(REFUSED_ORIGIN_PROBE, [server.base, eid, api.token])
            assert refused == {
                "state": "failed", "connections": 1, "states": ["connecting", "failed"],
                "errors": [[403, True, (
                    f"this service refuses pages on {origin}: add that origin to its allowed_origins "
                    f"setting (e.g. start it with ALLOWED_ORIGINS={origin})")]],
            }, refused
    assert refusals_logged(Path(server.log.name), origin) == 1


IDLE_SOCKET_PROBE = """
async ([url, idleMs]) => {
  // The platform's original front-end code: a bare WebSocket that only listens.
  const ws = new WebSocket(url);
  const received = [];
  let closed = null;
  ws.onmessage = (event) => received.push(JSON.parse(event.data));
  ws.onclose = (event) => { closed = event.code; };
  await new Promise((resolve) => { ws.onopen = resolve; });
  await new Promise((resolve) => setTimeout(resolve, idleMs));
  window.idleSocket = { ws, received, closed: () => closed };
  return { readyState: ws.readyState, closed, types: received.map((m) => m.type) };
}
"""


async def test_a_browser_socket_answers_the_heartbeat_and_stays(
        database_url, browser, sql, tmp_path, change_source):
    # The browser, not our code, answers protocol pings; at 0.3 s a round, 4 s idle are 13 rounds.
    process = ServerProcess(database_url, tmp_path / "server.log", change_source)
    process.env["WS_HEARTBEAT_SECONDS"] = "0.3"
    process.start()
    try:
        api = Api(process.base, f"browser-{uuid.uuid4().hex[:8]}")
        eid = (await api.execution(nodes=()))["id"]
        page = await browser.new_page()
        await page.goto(process.base + "/static/live-client.js")  # the service's origin
        url = f"ws://127.0.0.1:{process.port}/api/v1/ws/executions/{eid}?access_token={api.token}"
        idle = await page.evaluate(IDLE_SOCKET_PROBE, [url, 4000])
        assert idle == {"readyState": 1, "closed": None, "types": ["status", "synced"]}, idle
        await run_sql(sql, "UPDATE executions SET status='running', message='after the idle' WHERE id=%s", eid)
        await page.wait_for_function("window.idleSocket.received.length === 3", timeout=TIMEOUT_MS)
        assert await page.evaluate("window.idleSocket.received[2].message") == "after the idle"
        await page.close()
    finally:
        process.close()


EVENT_SOURCE_PROBE = """
([path]) => {
  // A bare EventSource, as any front end would open one: it reconnects by itself, with the
  // Last-Event-ID header, after a stream ends or its connection fails.
  const seen = { lines: [], ids: [], types: [], status: null, opens: 0 };
  const source = new EventSource(path);
  source.onopen = () => { seen.opens += 1; };
  source.onmessage = (event) => {
    const message = JSON.parse(event.data);
    seen.types.push(message.type);
    if (message.type === 'status') seen.status = message.status;
    if (message.type === 'log') {
      seen.lines.push(message.message);
      seen.ids.push(Number(event.lastEventId));
    }
  };
  window.sse = { source, seen };
}
"""


async def test_event_source_resumes_with_last_event_id_across_a_server_restart(
        database_url, browser, sql, tmp_path, change_source):
    server = ServerProcess(database_url, tmp_path / "server.log", change_source)
    server.start()
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
        eid = (await api.execution())["id"]
        await run_sql(sql, "UPDATE executions SET status='running' WHERE id=%s", eid)
        await page.goto(server.base + "/static/live-client.js")  # the service's origin
        await page.evaluate(EVENT_SOURCE_PROBE, [f"/api/v1/executions/{eid}/events?access_token={api.token}"])
        await page.wait_for_function("window.sse.seen.types.includes('synced')")

        log = "INSERT INTO execution_logs (execution_id, message) VALUES (%s, %s)"
        lines = [f"line {i:03}" for i in range(90)]
        for text in lines[:30]:
            await run_sql(sql, log, eid, text)
        await page.wait_for_function("window.sse.seen.lines.length === 30")

        # The server goes away (its streams end) while lines keep coming; a new process takes its
        # place on the same port, and EventSource comes back to it by itself.
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
        for text in lines[30:60]:
            await run_sql(sql, log, eid, text)
            await asyncio.sleep(0.01)
        await stopping
        await asyncio.get_running_loop().run_in_executor(None, server.start)
        for text in lines[60:]:
            await run_sql(sql, log, eid, text)
        await run_sql(sql, "UPDATE executions SET status='completed' WHERE id=%s", eid)

        # After the final status the stream ends; EventSource reconnects once more, gets 204 (it has
        # everything) and stops for good: readyState CLOSED.
        await page.wait_for_function("window.sse.source.readyState === EventSource.CLOSED", timeout=30_000)
        seen = await page.evaluate("window.sse.seen")
        assert seen["lines"] == lines, "every line, in order, none twice"
        assert seen["ids"] == sorted(set(seen["ids"])) and len(seen["ids"]) == 90
        assert seen["status"] == "completed" and seen["types"].count("synced") >= 2
        assert seen["opens"] >= 2, seen["opens"]
    finally:
        await page.context.close()
        server.close()


# -- the dashboard's list under a running demo ------------------------------------------------

WATCH_THE_LIST = """
() => {
  // What a press lands on, and what happens to the list's rows while the test clicks.
  window.pressed = [];
  document.addEventListener('pointerdown', (e) => {
    window.pressed.push(e.target.closest('#executions tr[data-id]')?.dataset.id ?? null);
  }, true);
  window.listChanges = { removed: 0, updated: 0 };
  new MutationObserver((records) => {
    for (const r of records) {
      const rows = [...r.removedNodes].filter((n) => n.nodeName === 'TR' && !n.isConnected);
      if (r.type === 'childList') window.listChanges.removed += rows.length;
      else window.listChanges.updated += 1;
    }
  }).observe(document.getElementById('executions'), {
    childList: true, subtree: true, attributes: true, attributeFilter: ['data-status', 'aria-valuenow'],
  });
}
"""

ROW_BOX = """
(index) => {
  const { x, y, width, height } = document.querySelectorAll('#executions tr')[index].getBoundingClientRect();
  return { x, y, width, height };
}
"""


async def test_every_click_on_a_row_opens_it_while_the_demo_worker_writes(database_url, browser, tmp_path):
    """30 clicks at a person's pace (aim, press ~90 ms, release) on rows that the demo worker's
    SQL keeps changing: each opens the execution pressed."""
    async with empty_database(database_url, "dashboard_clicks") as url:
        await apply_migrations(url)
        server = ServerProcess(url, tmp_path / "server.log", "notify")
        server.start()
        with open(tmp_path / "worker.log", "wb") as worker_log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "service", "demo-worker", "--seed", "--speed", "3",
                 "--concurrency", "4", "--submit-every", "1.2", "--fail-rate", "0.1"],
                env=server.env, stdout=worker_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # The demo's workflows belong to the development token's subject.
            await sign_in(page, server.base, token_for("developer", "admin"))
            rows = page.locator("#executions tr")
            await expect(rows.nth(5)).to_be_attached(timeout=20_000)
            await page.evaluate(WATCH_THE_LIST)
            rng = random.Random(14)
            opened, missed = 0, []
            for attempt in range(30):
                await page.evaluate("location.hash = '#/'")
                await expect(page.locator("#detail")).to_be_hidden()
                box = await page.evaluate(ROW_BOX, rng.randrange(min(8, await rows.count())))
                # Aim at the row's workflow and status (the id's link navigates by itself).
                await page.mouse.move(box["x"] + box["width"] * rng.uniform(0.3, 0.7),
                                      box["y"] + box["height"] / 2, steps=rng.randint(3, 8))
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                await page.mouse.down()
                await asyncio.sleep(rng.uniform(0.07, 0.12))
                await page.mouse.up()
                pressed = (await page.evaluate("window.pressed"))[-1]
                try:
                    await expect(page.locator("#detail-id")).to_have_text(pressed or "", timeout=2000)
                    await expect(page.locator("#detail")).to_be_visible(timeout=100)
                    opened += 1
                except AssertionError:
                    missed.append((attempt, pressed))
                await asyncio.sleep(rng.uniform(0.15, 0.4))
            # Keyboard focus on a row's link stays there while the rows around it change.
            await page.evaluate("location.hash = '#/'")
            focused = await page.evaluate(
                "(() => { const tr = document.querySelectorAll('#executions tr')[2];"
                " tr.querySelector('a').focus(); return tr.dataset.id; })()")
            await asyncio.sleep(2)
            assert await page.evaluate("document.activeElement.closest('tr')?.dataset.id") == focused
            changes = await page.evaluate("window.listChanges")
            assert (opened, missed) == (30, []), f"{len(missed)} of 30 clicks opened nothing: {missed}"
            assert changes["updated"] >= 30, f"the demo barely wrote while the test clicked: {changes}"
            assert changes["removed"] == 0, "rows were rebuilt, not updated in place"
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await context.close()
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            server.close()


async def test_a_refused_token_clears_the_list(server, page, sql):
    api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
    running = (await api.execution())["id"]
    await api.execution()
    await run_sql(sql, "UPDATE executions SET status='running' WHERE id=%s", running)
    rows = page.locator("#executions tr")

    # The token expires while the page is open: the feed's socket is closed with 4401.
    await sign_in(page, server.base, token_for(api.sub, ttl=4))
    running_row = page.locator(f'#executions tr[data-id="{running}"]')
    await expect(running_row).to_have_attribute("data-status", "running")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#banner")).to_contain_text("refused this token (token expired)",
                                                          timeout=15_000)
    await expect(rows).to_have_count(0)
    await expect(page.locator("#executions-empty")).to_be_hidden()
    await expect(page.locator("#executions-none-match")).to_be_hidden()

    # A good token shows them again; a forged one pasted over it clears them.
    await sign_in(page, server.base, api.token)
    await expect(rows).to_have_count(2)
    await page.fill("#token-input", api.token.rsplit(".", 1)[0] + ".forged")
    await page.click("#token-form button")
    await expect(page.locator("#banner")).to_contain_text("refused this token (invalid token)")
    await expect(rows).to_have_count(0)


async def test_an_empty_list_says_whether_a_filter_hides_executions(server, page):
    api = Api(server.base, f"browser-{uuid.uuid4().hex[:8]}")
    await sign_in(page, server.base, api.token)
    none_yet, none_match = page.locator("#executions-empty"), page.locator("#executions-none-match")
    await expect(none_yet).to_be_visible()
    await expect(none_yet).to_contain_text("No executions yet")
    await expect(none_match).to_be_hidden()

    execution = await api.execution()
    row = page.locator(f'#executions tr[data-id="{execution["id"]}"]')
    await expect(row).to_be_visible()
    await expect(none_yet).to_be_hidden()
    await page.select_option("#filter-status", "cancelled")
    await expect(row).to_have_count(0)
    await expect(none_match).to_have_text("No executions match these filters.")
    await expect(none_yet).to_be_hidden()
    await page.select_option("#filter-status", "")
    await expect(row).to_be_visible()
    await expect(none_match).to_be_hidden()
