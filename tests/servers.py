"""Real `python -m service serve` processes for the tests: a free port, start, wait until ready."""

import asyncio
import os
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


async def start_server(database_url: str, log_file, **env) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
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
