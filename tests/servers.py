"""Real `python -m service serve` processes for the tests: a free port, start, wait until ready."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp

from .actors import JWT_SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_server(database_url: str, log_file, port: int | None = None,
                       **env) -> tuple[asyncio.subprocess.Process, int]:
    """A server on `port` (a restarted one, on its predecessor's), else on a free port."""
    port = port or free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve",
        env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "PORT": str(port),
             "LOG_FORMAT": "json", **env},
        stdout=log_file, stderr=log_file,
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return process, port
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become ready")


def wait_ready(base: str, process: subprocess.Popen) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError("server exited")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


async def stop_server(process: asyncio.subprocess.Process) -> int:
    """SIGTERM, as systemd stops it; killed if it is still there 15 s later. Its exit status."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode
