"""Configuration: every key declared once, on Config, with its default, description and allowed
values; a TOML file overrides the defaults, and the environment (the key in upper case) the file.

`python -m service config` prints the effective configuration with all of that beside each key.
"""

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import psycopg2.extensions

from .auth import ROLES, TOKEN_ALGORITHMS

# A checkout's own file (where `make run` finds it); an installed wheel has none, and runs on its
# defaults and the environment unless AIAGENT_CONFIG or --config names a file.
CHECKOUT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "config" / "aiagent-live.toml"
CONFIG_FILE_VARIABLE = "AIAGENT_CONFIG"

BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True,
                 "false": False, "0": False, "no": False, "off": False}
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", re.IGNORECASE)
INTEGER = re.compile(r"\s*[+-]?\d+\s*")


class ConfigError(Exception):
    """The configuration file or an environment override is unusable."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one key accepts, beyond its type; `allowed` overrides the generated description."""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    secret: bool = False  # never shown
    password: bool = False  # a connection URL, shown without its password
    origins: bool = False
    check: Callable | None = None  # returns the value, normalised, or raises ValueError
    allowed: str | None = None


def setting(default, description: str, **rule):
    return dataclasses.field(default=default, metadata={"description": description, "rule": Rule(**rule)})


def checked_connection_string(text: str) -> str:
    """What libpq can read (a postgresql:// URL or key=value pairs), so a typo is refused here,
    by name, rather than by the first connection, whose error quotes the whole string."""
    if text:
        try:
            psycopg2.extensions.parse_dsn(text)
        except psycopg2.ProgrammingError:
            raise ValueError("not a connection string") from None
    return text


CONNECTION_STRING = ("a PostgreSQL connection URL (postgresql://user:password@host:port/db) or "
                     "key=value pairs (host=db user=app dbname=app)")


def checked_jwks_url(url: str) -> str:
    """An https URL; plain http only to this machine (a test's or a sidecar's JWKS), since keys
    fetched in the clear could be swapped by anyone on the path."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme == "https" and parts.hostname:
        return url.strip()
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return url.strip()
    raise ValueError(url)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_algorithms(names: tuple[str, ...]) -> tuple[str, ...]:
    """Each one of TOKEN_ALGORITHMS, spelled as there."""
    canonical = {name.lower(): name for name in TOKEN_ALGORITHMS}
    if not names or any(name.lower() not in canonical for name in names):
        raise ValueError(names)
    return tuple(canonical[name.lower()] for name in names)


def checked_role_map(pairs: tuple[str, ...]) -> tuple[str, ...]:
    """Each "name=role", role one of ROLES; one role per name."""
    names = set()
    for pair in pairs:
        name, equals, role = pair.partition("=")
        if not equals or not name or role not in ROLES or name in names:
            raise ValueError(pair)
        names.add(name)
    return pairs


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = setting(
        "127.0.0.1", "Address to listen on (0.0.0.0: every interface, e.g. behind a load balancer).")
    port: int = setting(
        8037, "TCP port of the REST API and the WebSockets.", minimum=1, maximum=65535)
    listen_backlog: int = setting(
        4096, "Connections the kernel queues before they are accepted (capped by net.core.somaxconn): a "
        "reconnect storm comes all at once, and past the backlog clients wait a second for a SYN resend.",
        minimum=1, maximum=1_000_000)
    database_url: str = setting(
        "", "PostgreSQL URL (postgresql://user:password@host/db); empty: an embedded development "
        "PostgreSQL in data_dir.", password=True, check=checked_connection_string,
        allowed=CONNECTION_STRING + "; empty: an embedded development PostgreSQL")
    data_dir: str = setting(
        "var", "Directory (relative to the working directory) of the embedded development database and "
        "its token secret; only used when database_url is empty.")
    db_pool_min: int = setting(
        1, "Connections the REST pool keeps open.", minimum=0, maximum=1000)
    db_pool_max: int = setting(
        10, "Most connections the REST pool opens.", minimum=1, maximum=1000)
    jwt_secret: str = setting(
        "", "HS256 secret of bearer tokens; with database_url, this or jwks_url is required (without "
        "database_url, a random one kept in data_dir/jwt_secret). Empty with jwks_url: no HS256 tokens.",
        secret=True)
    jwks_url: str = setting(
        "", "URL of an identity provider's JWKS (its public signing keys): its tokens, signed with one of "
        "jwt_algorithms, are accepted beside jwt_secret's. Empty: none.",
        check=checked_jwks_url, allowed="empty, an https:// URL, or http:// to a loopback address")
    jwt_algorithms: tuple[str, ...] = setting(
        ("RS256", "ES256"), "Signature algorithms accepted for tokens checked with the JWKS.",
        check=checked_algorithms,
        allowed="a list of " + ", ".join(TOKEN_ALGORITHMS))
    jwt_issuer: str = setting(
        "", "The iss a JWKS-checked token must carry (the identity provider's issuer URL); empty: not "
        "checked.")
    jwt_audience: str = setting(
        "", "The aud a JWKS-checked token must carry (this service at the identity provider); empty: not "
        "checked.")
    role_claim: str = setting(
        "role", "Claim of a JWKS-checked token that holds its role: a string or a list of strings; a "
        "dotted path (realm_access.roles) reaches into objects when no claim has the whole name.")
    role_map: tuple[str, ...] = setting(
        (), "The identity provider's role names as this service's roles (\"agent-admin=admin ops=worker\"); "
        "with a map only mapped names count, without one the claim must say user, worker or admin. The "
        "strongest role named wins.", check=checked_role_map,
        allowed='a list of "name=role" with role one of ' + ", ".join(ROLES))
    jwks_cache_seconds: float = setting(
        300.0, "The JWKS is fetched again in the background once older than this (a key removed there is "
        "refused from then on).", minimum=1, maximum=86400)
    jwks_min_refetch_seconds: float = setting(
        10.0, "A token naming a key the JWKS lacks fetches it again at most this often: tokens with made-up "
        "key ids cannot flood the identity provider.", minimum=0, maximum=3600)
    log_level: str = setting(
        "info", "Least severe log level written.", choices=("debug", "info", "warning", "error", "critical"))
    log_format: str = setting(
        "auto", "Log lines as json, console (for people), or auto (console on a terminal).",
        choices=("auto", "json", "console"))
    max_body_bytes: int = setting(
        8 * 1024 * 1024, "Largest REST request body, in bytes (results can be megabytes); 413 beyond.",
        minimum=1024, maximum=2**31 - 1)
    ws_max_message_bytes: int = setting(
        64 * 1024, "Largest frame a WebSocket client may send; larger ones close the socket with 1009.",
        minimum=1024, maximum=2**31 - 1)
    ws_heartbeat_seconds: float = setting(
        30.0, "Seconds between protocol ping rounds; a peer silent since the previous round's ping is "
        "dropped. Event streams get a `: ping` comment each round. 0 turns pings off.",
        minimum=0, maximum=86400)
    ws_outbox_capacity: int = setting(
        256, "Messages one socket (or event stream) may have queued before it is closed with 1013 "
        "(too slow; a stream is dropped).",
        minimum=1, maximum=1_000_000)
    ws_send_timeout_seconds: float = setting(
        10.0, "Seconds one frame may take to leave before the socket is closed with 1013 (too slow).",
        minimum=0.01, maximum=3600)
    ws_max_subscriptions: int = setting(
        100, "Executions one socket on /api/v1/ws may subscribe to at once.", minimum=1, maximum=1_000_000)
    ws_max_sockets_per_subject: int = setting(
        50, "Sockets and event streams one token subject may hold open on one process; past it a new socket "
        "closes with 4429, a new stream is refused with 429.",
        minimum=1, maximum=10**8)
    ws_messages_per_second: float = setting(
        20.0, "Messages a client may send on one socket a second, on average; past it frames are dropped "
        "with an error.", minimum=0.01, maximum=10**6)
    ws_message_burst: int = setting(
        50, "Messages a client may send on one socket in a burst.", minimum=1, maximum=10**6)
    ws_log_tail: int = setting(
        100, "Log lines a socket gets on connect (before live ones) when it does not resume with since.",
        minimum=0, maximum=100_000)
    ws_output_preview_chars: int = setting(
        4096, "A node's output longer than this (as JSON text) is sent cut, with output_truncated: true.",
        minimum=0, maximum=65536)
    max_log_batch: int = setting(
        1000, "Most log lines one POST /api/v1/executions/{id}/logs may carry (413 beyond).",
        minimum=1, maximum=1_000_000)
    change_source: str = setting(
        "notify", "How the service hears of changes: notify (LISTEN; no server setting needed) or wal "
        "(logical decoding of the triggers' WAL messages: writers commit without taking turns; needs "
        "wal_level = logical, PostgreSQL 14+, a role with REPLICATION).", choices=("notify", "wal"))
    push_database_url: str = setting(
        "", "With change_source = wal: a hot standby (PostgreSQL 16+) that decodes the changes and serves "
        "every read that feeds sockets; REST stays on database_url. Empty: database_url.", password=True,
        check=checked_connection_string, allowed=CONNECTION_STRING + "; empty: database_url")
    reconcile_interval_seconds: float = setting(
        10.0, "Seconds between reconciles, which re-read every subscribed execution in one query and "
        "catch a listener that died without an error.", minimum=0.01, maximum=86400)
    listener_ping_seconds: float = setting(
        5.0, "An idle LISTEN connection is pinged this often; no answer within the same time means dead.",
        minimum=0.01, maximum=3600)
    listener_backoff_min_seconds: float = setting(
        0.1, "First wait before the listener reconnects; doubled after each failure.",
        minimum=0.001, maximum=3600)
    listener_backoff_max_seconds: float = setting(
        5.0, "Longest wait between the listener's reconnects.", minimum=0.001, maximum=3600)
    listener_coalesce_seconds: float = setting(
        0.010, "While changes come faster than they are read, the listener gathers them this long before "
        "each read (one read for many commits); 0 turns it off.", minimum=0, maximum=1)
    shutdown_timeout_seconds: float = setting(
        10.0, "On SIGTERM or SIGINT: stop accepting, close sockets with 1001, finish requests, close the "
        "listener and the pool, and exit within this many seconds.", minimum=0.1, maximum=3600)
    allowed_origins: tuple[str, ...] = setting(
        (), "Browser origins allowed to call the REST API and open sockets (\"*\": any); the service's own "
        "origin is always allowed, and in development mode (no database_url) every loopback origin too "
        "(http://localhost:<any port>, 127.0.0.1, [::1]). From the environment: separated by spaces or "
        "commas.", origins=True,
        allowed='a list of origins such as "https://app.example.com", or "*"')

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def push_dsn(self) -> str:
        """Where the push path decodes and reads: the standby if one is named, else the database."""
        return self.push_database_url or self.database_url


# They say how to check the identity provider's tokens, so they mean nothing without its jwks_url.
IDENTITY_PROVIDER_KEYS = ("jwt_algorithms", "jwt_issuer", "jwt_audience", "role_claim", "role_map",
                          "jwks_cache_seconds", "jwks_min_refetch_seconds")
ORDERED = (("db_pool_min", "db_pool_max"), ("listener_backoff_min_seconds", "listener_backoff_max_seconds"))
FIELDS = {field.name: field for field in dataclasses.fields(Config)}


def load_config(path: str | os.PathLike | None = None, environ: dict | None = None) -> Config:
    """The file (`path`, else AIAGENT_CONFIG, else a checkout's config/aiagent-live.toml if there
    is one), then the environment; ConfigError naming the key, the value and what is allowed."""
    return load_config_and_sources(path, environ)[0]


def load_config_and_sources(path: str | os.PathLike | None = None,
                            environ: dict | None = None) -> tuple[Config, dict[str, str]]:
    """The configuration, and where each value that is not a default came from."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    sources: dict[str, str] = {}
    file = config_file(path, environ)
    if file is not None:
        for name, raw in read_toml(file).items():
            values[name], sources[name] = parse(name, raw, str(file)), str(file)
    for name in FIELDS:
        variable = name.upper()
        if variable in environ:
            source = f"environment variable {variable}"
            values[name], sources[name] = parse(name, environ[variable], source), source
    config = Config(**values)
    for lower, upper in ORDERED:
        if getattr(config, lower) > getattr(config, upper):
            raise ConfigError(
                f"{lower} = {getattr(config, lower)} ({sources.get(lower, 'default')}) is more than "
                f"{upper} = {getattr(config, upper)} ({sources.get(upper, 'default')}): "
                f"{lower} must be at most {upper}")
    if not config.jwks_url:
        for name in IDENTITY_PROVIDER_KEYS:
            if getattr(config, name) != FIELDS[name].default:
                raise ConfigError(f"{name} ({sources[name]}) needs jwks_url: it applies to the identity "
                                  "provider's tokens only")
    if config.push_database_url and config.change_source != "wal":
        raise ConfigError(
            f"push_database_url ({sources['push_database_url']}) needs change_source = wal "
            f"(it is {config.change_source}, {sources.get('change_source', 'default')}): a standby "
            "cannot LISTEN, and its reads could lag behind what a notification announced")
    return config, sources


def config_file(path: str | os.PathLike | None, environ) -> Path | None:
    """The file to read: a file named explicitly must exist; a checkout's is read only if present."""
    named = path or environ.get(CONFIG_FILE_VARIABLE)
    if named:
        if not Path(named).is_file():
            origin = "--config" if path else CONFIG_FILE_VARIABLE
            raise ConfigError(f"{origin} names {named}, which is not a file")
        return Path(named)
    return CHECKOUT_CONFIG_FILE if CHECKOUT_CONFIG_FILE.is_file() else None


def read_toml(path: Path) -> dict:
    try:
        values = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for name in values:
        if name not in FIELDS:
            near = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f"; did you mean {near[0]}?" if near else "; `python -m service config` lists every key"
            raise ConfigError(f"{path}: unknown key {name!r}{hint}")
    return values


def parse(name: str, raw, source: str):
    """One value (TOML-typed from the file, text from the environment) as its key's type, checked."""
    field = FIELDS[name]
    rule: Rule = field.metadata["rule"]
    try:
        value = parse_as(field.type, raw)
        if rule.choices is not None:
            value = value.strip().lower()
            if value not in rule.choices:
                raise ValueError
        if rule.check is not None:
            value = rule.check(value)
        if rule.origins:
            value = tuple(origin.rstrip("/") for origin in value)
            if not all(origin == "*" or ORIGIN.fullmatch(origin) for origin in value):
                raise ValueError
        if rule.minimum is not None and value < rule.minimum:
            raise ValueError
        if rule.maximum is not None and value > rule.maximum:
            raise ValueError
    except ValueError:
        shown = "***" if rule.secret or rule.password else toml_value(raw)
        raise ConfigError(f"{name} = {shown} ({source}): allowed: {allowed(name)}") from None
    return value


def parse_as(kind, raw):
    """`raw` as a value of `kind`; ValueError if it is not one. Text (from the environment) is
    read as the type asks: "8037" as an integer, "off" as false, "a, b" as a list."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[raw.strip().lower()]
    elif kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and INTEGER.fullmatch(raw):
            return int(raw)
    elif kind is float:
        number = None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str):
            number = float(raw)  # ValueError when it is no number
        if number is not None and math.isfinite(number):
            return number
    elif kind is str:
        if isinstance(raw, str):
            return raw
    elif kind == tuple[str, ...]:
        items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return tuple(items)
    raise ValueError(raw)


def allowed(name: str) -> str:
    """What a key accepts, in words."""
    field = FIELDS[name]
    rule: Rule = field.metadata["rule"]
    if rule.allowed:
        return rule.allowed
    if rule.choices:
        return "one of " + ", ".join(rule.choices)
    kind = {bool: "true or false (also 1/0, yes/no, on/off)", int: "an integer", float: "a number",
            str: "text"}[field.type]
    if rule.minimum is not None and rule.maximum is not None:
        return f"{kind} from {number_text(rule.minimum)} to {number_text(rule.maximum)}"
    if rule.minimum is not None:
        return f"{kind} of at least {number_text(rule.minimum)}"
    return kind


def number_text(number: float) -> str:
    return f"{number:,}".replace(",", "_") if isinstance(number, int) and number >= 100_000 else f"{number:g}"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string: the same escapes


def shown(name: str, value) -> str:
    """A value as TOML, secrets masked: a secret whole, a connection URL's password."""
    rule: Rule = FIELDS[name].metadata["rule"]
    if rule.secret and value:
        value = "***"
    elif rule.password and value:
        value = PASSWORD_IN_URL.sub(r"\1***\2", PASSWORD_PARAMETER.sub(r"\1***", value))
    return toml_value(value)


# postgresql://user:PASSWORD@host/db, and password=PASSWORD in a query string or a key=value string.
PASSWORD_IN_URL = re.compile(r"(://[^:/?#@]*:)[^@/?#]*(@)")
PASSWORD_PARAMETER = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)
