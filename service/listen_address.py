"""The address the server listens on: taken or not, said in one line before anything starts."""

import errno
import socket

from .config import Config


class CannotListen(Exception):
    """The configured address cannot be listened on; the message is one line for whoever started it."""


def cannot_listen(config: Config, exc: OSError) -> CannotListen:
    if exc.errno == errno.EADDRINUSE:
        return CannotListen(
            f"port {config.port} is already in use on {config.host} (another aiagent-live?): stop that "
            f"process, or choose another port with PORT (the `port` setting), e.g. PORT={config.port + 1}")
    return CannotListen(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
                        f"check HOST and PORT (the `host` and `port` settings)")


def ensure_can_listen(config: Config) -> None:
    """Fail in a line, before a database is started or migrated, when the address is taken: bind
    each address the server will listen on, then let go (the server binds again moments later)."""
    try:
        addresses = socket.getaddrinfo(config.host or None, config.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {config.host!r}: {exc.strerror}; check HOST (the `host` "
                           f"setting)") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As asyncio binds: a predecessor's connections in TIME_WAIT are no conflict, a listener is.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise cannot_listen(config, exc) from None
