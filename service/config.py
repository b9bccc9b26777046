"""Configuration: a TOML file in config/, overridden key by key from the environment."""

import dataclasses
import os
import tomllib
from pathlib import Path

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "config" / "aiagent-live.toml"


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8037
    listen_backlog: int = 4096
    database_url: str = ""
    data_dir: str = "var"
    db_pool_min: int = 1
    db_pool_max: int = 10
    jwt_secret: str = ""
    log_level: str = "info"
    log_format: str = "auto"
    max_body_bytes: int = 8 * 1024 * 1024
    ws_max_message_bytes: int = 64 * 1024
    ws_heartbeat_seconds: float = 30.0
    ws_outbox_capacity: int = 256
    ws_send_timeout_seconds: float = 10.0
    ws_max_subscriptions: int = 100
    ws_max_sockets_per_subject: int = 50
    ws_messages_per_second: float = 20.0
    ws_message_burst: int = 50
    ws_log_tail: int = 100
    ws_output_preview_chars: int = 4096
    max_log_batch: int = 1000
    reconcile_interval_seconds: float = 10.0
    listener_ping_seconds: float = 5.0
    listener_backoff_min_seconds: float = 0.1
    listener_backoff_max_seconds: float = 5.0
    listener_coalesce_seconds: float = 0.010
    shutdown_timeout_seconds: float = 10.0
    allowed_origins: tuple[str, ...] = ()

    @property
    def embedded_database(self) -> bool:
        return not self.database_url


class ConfigError(Exception):
    """The configuration file or an environment override is unusable."""


def load_config(path: str | os.PathLike | None = None, environ: dict | None = None) -> Config:
    """Read the file (AIAGENT_CONFIG, else config/aiagent-live.toml), then apply env overrides."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("AIAGENT_CONFIG") or DEFAULT_CONFIG_FILE)
    values: dict = {}
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    for name in fields:
        if name.upper() in environ:
            values[name] = environ[name.upper()]
    return Config(**{name: _coerce(name, fields[name].type, value) for name, value in values.items()})


def _coerce(name: str, kind: type, value):
    if kind == tuple[str, ...]:
        # A TOML list, or from the environment one string: "https://a.example, https://b.example".
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
        return tuple(item.rstrip("/") for item in items)
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from exc
