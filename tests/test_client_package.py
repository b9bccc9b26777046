"""client/ as an npm package: its TypeScript declarations compile with a typed use of them (tsc),
they declare every export of the JavaScript, and the packed package installs and imports by
name. The composable at work, against a real server in a real browser: tests/test_browser.py."""

import json
import re
import subprocess
import tarfile
from pathlib import Path

from service.api.dashboard_handlers import STATIC_DIR, client_directory

CLIENT_PACKAGE = Path(__file__).resolve().parent.parent / "client"

MODULES = {"live-client": "live-client.js", "use-execution": "use-execution.js"}


def run(command: list[str], cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_declarations_and_typed_uses_of_them_compile(client_package):
    # examples/ use every declaration, by the package's name, and hold @ts-expect-error lines that
    # must be errors: declarations too loose to catch a mistake fail as well.
    tsc = client_package / "node_modules" / ".bin" / "tsc"
    checked = run([str(tsc), "--noEmit", "-p", "."], client_package)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_export_of_the_javascript_is_declared(client_package):
    script = "Promise.all([import('./live-client.js'), import('./use-execution.js')])" \
             ".then((modules) => console.log(JSON.stringify(modules.map((m) => Object.keys(m).sort()))))"
    listed = run(["node", "--input-type=module", "-e", script], client_package, timeout=60)
    assert listed.returncode == 0, listed.stderr
    exported = dict(zip(MODULES, json.loads(listed.stdout)))
    for name in MODULES:
        text = (CLIENT_PACKAGE / f"{name}.d.ts").read_text()
        declared = re.findall(r"^export declare (?:function|const) (\w+)", text, re.MULTILINE)
        assert sorted(declared) == exported[name], name


def test_the_packed_package_installs_and_imports_by_name(client_package, tmp_path):
    packed = run(["npm", "pack", "--pack-destination", str(tmp_path), "--loglevel=error"], client_package)
    assert packed.returncode == 0, packed.stderr
    [tarball] = tmp_path.glob("aiagent-live-client-*.tgz")
    with tarfile.open(tarball) as archive:
        files = sorted(name.removeprefix("package/") for name in archive.getnames())
    assert files == ["live-client.d.ts", "live-client.js", "package.json", "use-execution.d.ts",
                     "use-execution.js"]

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "an-app", "private": True, "type": "module"}))
    # No dependencies to fetch: vue is an optional peer, which a plain-JS app does without.
    installed = run(["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--offline",
                     "--loglevel=error", str(tarball)], app)
    assert installed.returncode == 0, installed.stderr
    assert not (app / "node_modules" / "vue").exists()
    used = run(["node", "--input-type=module", "-e",
                "import { watchExecution, CLOSE } from '@aiagent-live/client';"
                "console.log(typeof watchExecution, CLOSE.NOT_FOUND)"], app, timeout=60)
    assert used.returncode == 0 and used.stdout.split() == ["function", "4404"], used.stderr


def test_one_source_the_service_serves_the_package_file():
    # /static/live-client.js is client/live-client.js itself (service/api/dashboard_handlers.py):
    # no copy in service/static to drift from it.
    assert client_directory() == CLIENT_PACKAGE
    assert not (STATIC_DIR / "live-client.js").exists()
