"""A built wheel deploys: installed (not editable) into a fresh virtualenv, `aiagent-live migrate`
and `aiagent-live serve` work from any directory with nothing but environment variables."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import aiohttp
import aiopg
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from .actors import JWT_SECRET, auth, token_for
from .servers import free_port

REPO = Path(__file__).resolve().parent.parent
# What the build reads: setup.cfg names the packages and where the migrations come from.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "service", "migrations", "client")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources: a build leaves build/ and *.egg-info behind, and would
    pack files that build/ still holds from an earlier build though they are gone from the tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        else:
            shutil.copy2(REPO / name, source / name)
    # Offline: this venv's setuptools and wheel, no index.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr[-2000:]
    [path] = (work / "dist").glob("aiagent_live-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed; its bin directory. The dependencies come from
    this test venv through a .pth file (no network), after the venv's own site-packages, so the
    wheel's `service` is the one imported."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)], capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr[-2000:]
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    Path(site_packages, "test-venv-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([str(python), "-c", "import service; print(service.__file__)"],
                           capture_output=True, text=True, check=True, cwd=venv).stdout
    assert where.startswith(site_packages), where
    return venv / "bin"


def only(**env) -> dict:
    """An environment of nothing but PATH and `env`: no config file, no checkout, no other setting."""
    return {"PATH": os.environ["PATH"], **env}


def test_the_wheel_holds_every_migration_and_the_static_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = [path.relative_to(REPO / "migrations") for path in (REPO / "migrations").rglob("*.sql")]
    assert migrations
    for path in migrations:
        assert f"service/migrations/{path.as_posix()}" in names
    for path in (REPO / "service" / "static").iterdir():
        assert f"service/static/{path.name}" in names
    assert "service/client/live-client.js" in names  # served at /static/live-client.js
    assert not [name for name in names
                if name.split("/")[0] in ("tests", "bench", "migrations", "config", "client")]


def test_installed_configuration_needs_no_checkout_and_no_file(installed, tmp_path):
    printed = subprocess.run([str(installed / "aiagent-live"), "config"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env=only(PORT="9100", JWT_SECRET="s3cret"))
    assert printed.returncode == 0, printed.stderr
    assert "# set by: environment variable PORT\nport = 9100" in printed.stdout
    assert "aiagent-live.toml" not in printed.stdout.split("\n\n", 1)[1], "no file was read"
    refused = subprocess.run([str(installed / "aiagent-live"), "serve"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env=only(DATABASE_URL="postgresql:///x", LOG_LEVEL="loud"))
    assert refused.returncode == 2 and refused.stderr.startswith("configuration error: log_level = \"loud\"")


@pytest.fixture
async def empty_database(database_url, sql):
    name = f"wheel_{uuid.uuid4().hex[:8]}"
    await sql.execute(f"CREATE DATABASE {name}")
    try:
        yield make_dsn(**{**parse_dsn(database_url), "dbname": name})
    finally:
        await sql.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_installed_wheel_migrates_and_serves_from_any_directory_with_only_the_environment(
        installed, empty_database, tmp_path):
    elsewhere = tmp_path / "anywhere"
    elsewhere.mkdir()
    environ = only(DATABASE_URL=empty_database, JWT_SECRET=JWT_SECRET)
    migrate = await asyncio.to_thread(
        subprocess.run, [str(installed / "aiagent-live"), "migrate"], env=environ, cwd=elsewhere,
        capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    # Every versioned file, then every repeatable one (migrations/functions/): all from the wheel.
    migrations = REPO / "migrations"
    every_file = len(list(migrations.glob("[0-9]*.sql"))) + len(list(migrations.glob("*/*.sql")))
    assert migrate.stdout.startswith(f"applied {every_file} migration(s)"), migrate.stdout
    async with aiopg.connect(empty_database, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT to_regclass(t) IS NOT NULL FROM unnest(%s::text[]) t",
                              (["workflows", "executions", "execution_nodes", "execution_logs"],))
            assert [exists for exists, in await cur.fetchall()] == [True] * 4

    port = free_port()
    with open(tmp_path / "server.log", "wb") as log_file:
        server = await asyncio.create_subprocess_exec(
            str(installed / "aiagent-live"), "serve", cwd=elsewhere, stdout=log_file, stderr=log_file,
            env={**environ, "PORT": str(port), "LOG_FORMAT": "json"})
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=auth(token_for("wheel-user"))) as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert server.returncode is None, (tmp_path / "server.log").read_text()[-2000:]
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the installed server did not become ready")
            async with session.post(f"{base}/api/v1/workflows", json={"name": "wf", "nodes": []}) as response:
                assert response.status == 201
                workflow = await response.json()
            async with session.post(f"{base}/api/v1/executions",
                                    json={"workflow_id": workflow["id"]}) as response:
                assert response.status == 201
                execution = await response.json()
            async with session.ws_connect(f"{base}/api/v1/ws/executions/{execution['id']}") as ws:
                first = json.loads((await ws.receive(timeout=5)).data)
                assert (first["type"], first["status"]) == ("status", "pending")
            async with session.get(f"{base}/") as response:  # the dashboard: static files in the wheel
                assert response.status == 200
            async with session.get(f"{base}/static/live-client.js") as response:  # from the wheel's client
                assert response.status == 200 and "export function watchExecution" in await response.text()
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 15) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


def test_the_systemd_unit_runs_the_installed_console_script(installed, tmp_path):
    unit = (REPO / "config" / "aiagent-live.service").read_text()
    commands = [line.split("=", 1)[1] for line in unit.splitlines()
                if line.startswith(("ExecStart=", "ExecStartPre="))]
    assert commands == ["/opt/aiagent-live/bin/aiagent-live migrate",
                        "/opt/aiagent-live/bin/aiagent-live serve"]
    assert "aiagent-live = service.__main__:main" in (REPO / "setup.cfg").read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as it would be with the venv at /opt/aiagent-live: here, the one the wheel went into.
    path = tmp_path / "aiagent-live.service"
    path.write_text(unit.replace("/opt/aiagent-live", str(installed.parent)))
    verified = subprocess.run(["systemd-analyze", "verify", str(path)],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stdout + verified.stderr, verified
