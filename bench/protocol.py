"""Load generators are child processes driven by JSON lines: one command in, one reply out."""

import json
import os
import select
import subprocess
import sys
import time


class ChildError(RuntimeError):
    """A load generator died, answered with an error, or did not answer in time."""


class Child:
    """A `python -m bench.<module>` process; send() and recv() may be split to drive several at once."""

    def __init__(self, module: str, *args: str, env: dict | None = None, name: str = ""):
        self.name = name or module
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
            env={**os.environ, **(env or {})}, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self._buffer = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, cmd: str, **fields) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise ChildError(f"{self.name} is gone (exit {self.proc.poll()})") from exc

    def recv(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while "\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.name} did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536).decode()
                if not chunk:
                    raise ChildError(f"{self.name} exited with {self.proc.wait()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition("\n")
        reply = json.loads(line)
        if "error" in reply:
            raise ChildError(f"{self.name}: {reply['error']}")
        return reply

    def request(self, cmd: str, timeout: float = 60, **fields) -> dict:
        self.send(cmd, **fields)
        return self.recv(timeout)

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
            except ChildError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def broadcast(children: list[Child], cmd: str, wait: float, per_child: list[dict] | None = None, **fields):
    """Send one command to every child at once, then collect every reply."""
    send_all(children, cmd, per_child, **fields)
    return recv_all(children, wait)


def send_all(children: list[Child], cmd: str, per_child: list[dict] | None = None, **fields) -> None:
    for i, child in enumerate(children):
        child.send(cmd, **fields, **(per_child[i] if per_child else {}))


def recv_all(children: list[Child], wait: float) -> list[dict]:
    """Every child's reply, all within `wait` seconds."""
    deadline = time.monotonic() + wait
    return [child.recv(max(0.1, deadline - time.monotonic())) for child in children]


def reply_channel():
    """The child side: the real stdout carries replies only; print() and logs go to stderr."""
    out = sys.stdout
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    return reply
