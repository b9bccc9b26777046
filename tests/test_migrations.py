"""The migrations runner: where it finds the files, what it applies when, all or nothing; and the
layout it relies on: schema in versioned files, every function and trigger in one repeatable file."""

import importlib.resources
import re
from pathlib import Path

import psycopg2
import pytest

from service.db import migrations
from service.db.migrations import MigrationsNotFound, apply_migrations, migration_files, migrations_directory

from .databases import catalog, cursor, empty_database, fetch_all

CHECKOUT_MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(sql)


def test_a_checkout_uses_its_top_level_migrations():
    assert migrations_directory() == CHECKOUT_MIGRATIONS


def test_an_installed_package_uses_its_own_copy(monkeypatch, tmp_path):
    (tmp_path / "migrations").mkdir()  # what service/migrations is in a built wheel
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    assert migrations.migrations_directory() == tmp_path / "migrations"


@pytest.mark.parametrize("layout", ["missing", "empty", "only repeatable files"])
async def test_no_migrations_is_an_error_never_nothing_pending(database_url, tmp_path, layout):
    if layout == "empty":
        tmp_path.joinpath("migrations").mkdir()
    elif layout == "only repeatable files":
        write(tmp_path / "migrations", "functions/f.sql", "SELECT 1")
    with pytest.raises(MigrationsNotFound, match="no migrations found in .*migrations"):
        await apply_migrations(database_url, tmp_path / "migrations")


def function(name: str, value: int) -> str:
    return f"CREATE OR REPLACE FUNCTION {name}() RETURNS int LANGUAGE sql AS 'SELECT {value}'"


async def test_repeatable_files_run_when_they_change_and_after_any_versioned_one(database_url, tmp_path):
    write(tmp_path, "001_table.sql", "CREATE TABLE things (id int)")
    write(tmp_path, "functions/answer.sql", function("answer", 1))
    write(tmp_path, "functions/other.sql", function("other", 1))
    async with empty_database(database_url, "runner") as url:
        assert await apply_migrations(url, tmp_path) == [
            "001_table.sql", "functions/answer.sql", "functions/other.sql"]
        assert await apply_migrations(url, tmp_path) == []

        write(tmp_path, "functions/answer.sql", function("answer", 2))
        assert await apply_migrations(url, tmp_path) == ["functions/answer.sql"]
        async with cursor(url) as cur:
            assert await fetch_all(cur, "SELECT answer()") == [(2,)]

        # A versioned migration may drop what a repeatable file defines: all of them run again.
        write(tmp_path, "002_drop.sql", "DROP FUNCTION other()")
        assert await apply_migrations(url, tmp_path) == [
            "002_drop.sql", "functions/answer.sql", "functions/other.sql"]
        async with cursor(url) as cur:
            assert await fetch_all(cur, "SELECT other()") == [(1,)]


async def test_a_failed_run_changes_nothing(database_url, tmp_path):
    write(tmp_path, "001_table.sql", "CREATE TABLE things (id int)")
    write(tmp_path, "functions/broken.sql", "CREATE FUNCTION broken( RETURNS")
    async with empty_database(database_url, "runner") as url:
        with pytest.raises(psycopg2.errors.SyntaxError):
            await apply_migrations(url, tmp_path)
        async with cursor(url) as cur:
            assert await fetch_all(cur, "SELECT to_regclass('things'), to_regclass('schema_migrations')") == [
                (None, None)]


async def test_every_repeatable_file_can_run_again_and_leaves_the_schema_as_it_was(database_url):
    async with empty_database(database_url, "again") as url:
        await apply_migrations(url)
        first = await catalog(url)
        async with cursor(url) as cur:
            await cur.execute("UPDATE schema_repeatable_migrations SET checksum = 'changed'")
        repeatable = [name for name in migration_files() if name.startswith("functions/")]
        assert await apply_migrations(url) == repeatable
        assert await catalog(url) == first


CREATES = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|TRIGGER)\s+(\w+)", re.IGNORECASE)


def test_versioned_files_hold_no_function_and_each_function_and_trigger_has_one_file():
    created: dict[tuple[str, str], list[str]] = {}
    for name in migration_files():
        for kind, object_name in CREATES.findall((CHECKOUT_MIGRATIONS / name).read_text()):
            created.setdefault((kind.upper(), object_name), []).append(name)
    in_versioned = {found: names for found, names in created.items()
                    if not all(name.startswith("functions/") for name in names)}
    assert in_versioned == {}
    assert {found: names for found, names in created.items() if len(names) > 1} == {}


async def test_every_function_and_trigger_of_a_migrated_database_comes_from_a_repeatable_file(database_url):
    defined = {object_name for name in migration_files() if name.startswith("functions/")
               for _, object_name in CREATES.findall((CHECKOUT_MIGRATIONS / name).read_text())}
    async with empty_database(database_url, "defined") as url:
        await apply_migrations(url)
        async with cursor(url) as cur:
            present = await fetch_all(cur, "SELECT proname FROM pg_proc"
                                           " WHERE pronamespace = 'public'::regnamespace"
                                           " UNION SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    assert {name for (name,) in present} == defined
