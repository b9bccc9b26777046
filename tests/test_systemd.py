"""The systemd notify protocol, spoken by a real `python -m service serve` to a socket the test holds."""

import asyncio
import os
import signal
import socket
import tempfile
import time

import aiohttp

from service.systemd_notify import SystemdNotifier

from .servers import start_server


class NotifySocket:
    """What systemd holds: a unix datagram socket; collects every datagram with its arrival time."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.received: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return [fields for _, fields in self.received]
            lines = data.decode().split("\n")
            self.received.append((time.monotonic(), dict(line.split("=", 1) for line in lines)))

    async def collect_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.drain()
            await asyncio.sleep(0.01)

    async def wait_for(self, key: str, timeout: float = 10) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for fields in self.drain():
                if key in fields:
                    return fields
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {key} among {self.drain()}")

    def close(self):
        self.sock.close()


async def test_ready_after_the_listener_connects_watchdog_pings_and_stopping_on_sigterm(database_url, tmp_path):
    directory = tempfile.mkdtemp(prefix="notify-")  # short: unix socket paths are limited to 107 bytes
    notify = NotifySocket(os.path.join(directory, "notify"))
    with open(tmp_path / "server.log", "wb") as log_file:
        process, port = await start_server(
            database_url, log_file, NOTIFY_SOCKET=notify.sock.getsockname(), WATCHDOG_USEC="400000")
    try:
        ready = await notify.wait_for("READY")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("serving")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                body = await response.json()
                assert response.status == 200 and body["checks"]["listener"] is True

        # Pings at half of WATCHDOG_USEC (0.2 s): about ten in two seconds.
        await notify.collect_for(2)
        pings = [at for at, fields in notify.received if fields.get("WATCHDOG") == "1"]
        assert len(pings) >= 6, pings
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 0.4, gaps  # always inside the deadline
        ready_at = next(at for at, fields in notify.received if "READY" in fields)
        assert all(at >= ready_at for at in pings), "watchdog pings start once ready"

        process.send_signal(signal.SIGTERM)
        stopping = await notify.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert await asyncio.wait_for(process.wait(), 15) == 0
        notify.drain()
        stopping_at = next(at for at, fields in notify.received if "STOPPING" in fields)
        assert not [at for at, fields in notify.received if "WATCHDOG" in fields and at > stopping_at]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        notify.close()


async def test_no_watchdog_pings_when_the_watchdog_is_meant_for_another_process(database_url, tmp_path):
    directory = tempfile.mkdtemp(prefix="notify-")
    notify = NotifySocket(os.path.join(directory, "notify"))
    with open(tmp_path / "server.log", "wb") as log_file:
        process, _ = await start_server(
            database_url, log_file, NOTIFY_SOCKET=notify.sock.getsockname(), WATCHDOG_USEC="200000",
            WATCHDOG_PID="1")
    try:
        await notify.wait_for("READY")
        await notify.collect_for(0.5)
        assert not [fields for fields in notify.drain() if "WATCHDOG" in fields]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        notify.close()


def test_abstract_namespace_socket_and_no_socket_at_all():
    name = f"aiagent-test-{os.getpid()}-{time.monotonic_ns()}"
    notify = NotifySocket("\0" + name)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled and notifier.watchdog_interval is None
        assert notifier.ready("serving")
        assert notify.drain() == [{"READY": "1", "STATUS": "serving"}]
        notifier.close()
    finally:
        notify.close()
    silent = SystemdNotifier({})
    assert not silent.enabled and not silent.ready("serving") and not silent.watchdog()


def test_a_vanished_systemd_socket_is_logged_not_raised():
    directory = tempfile.mkdtemp(prefix="notify-")
    notifier = SystemdNotifier({"NOTIFY_SOCKET": os.path.join(directory, "gone")})
    assert notifier.notify("STATUS=hello") is False
    notifier.close()
