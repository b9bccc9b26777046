"""Configuration: one declaration of every key, typed and checked loading, refusals that name the
key, the value and what is allowed, and `python -m service config`."""

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.config import CHECKOUT_CONFIG_FILE, FIELDS, Config, ConfigError, load_config, parse_as

REPO = Path(__file__).resolve().parent.parent


def clean_environ(**env) -> dict:
    """This process's environment without any configuration key, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k.lower() not in FIELDS and k != "AIAGENT_CONFIG"}
    return {**base, **env}


def run_service(*args: str, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], env=clean_environ(**env), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def toml_file(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / "aiagent-live.toml"
        path.write_text(text)
        return path
    return write


def test_every_key_declares_its_default_description_and_what_it_allows():
    for field in dataclasses.fields(Config):
        assert field.default is not dataclasses.MISSING, field.name
        description = field.metadata["description"]
        assert description and "\n" not in description, field.name
        assert field.metadata["rule"] is not None


def test_the_shipped_file_restates_no_default_and_its_examples_are_valid(tmp_path):
    text = CHECKOUT_CONFIG_FILE.read_text()
    assert tomllib.loads(text) == {}, "config/aiagent-live.toml must only hold commented examples"
    examples = [line[2:] for line in text.splitlines() if re.match(r"# [a-z_]+ = ", line)]
    assert examples
    path = tmp_path / "examples.toml"
    path.write_text("\n".join(examples))
    load_config(path, environ={})


def test_defaults_without_a_file_or_environment(toml_file):
    assert load_config(toml_file(""), environ={}) == Config()


def test_file_then_environment_each_typed(toml_file):
    path = toml_file('port = 9000\nlog_level = "debug"\nws_heartbeat_seconds = 5\n')
    config = load_config(path, environ={"PORT": "9100", "WS_LOG_TAIL": " 7 ", "LOG_LEVEL": "WARNING",
                                        "LISTENER_COALESCE_SECONDS": "0", "ALLOWED_ORIGINS": "*"})
    assert (config.port, config.log_level, config.ws_log_tail) == (9100, "warning", 7)
    assert config.ws_heartbeat_seconds == 5.0
    assert config.listener_coalesce_seconds == 0.0 and config.allowed_origins == ("*",)
    assert isinstance(config.ws_heartbeat_seconds, float)


@pytest.mark.parametrize("text, value", [
    *[(word, True) for word in ("true", "TRUE", "True", "1", "yes", "Yes", "on", "ON", " on ")],
    *[(word, False) for word in ("false", "False", "FALSE", "0", "no", "NO", "off", "Off")],
    (True, True), (False, False),
])
def test_booleans_read_from_words_of_either_case(text, value):
    assert parse_as(bool, text) is value


@pytest.mark.parametrize("text", ["", "2", "truthy", "none", "y", "n", 1, 0])
def test_anything_else_is_no_boolean(text):
    with pytest.raises(ValueError):
        parse_as(bool, text)


# (environment, the start of the one-line refusal)
ENVIRONMENT_REFUSALS = [
    ({"WS_LOG_TAIL": "-1"},
     'ws_log_tail = "-1" (environment variable WS_LOG_TAIL): allowed: an integer from 0 to '),
    ({"PORT": "0"}, 'port = "0" (environment variable PORT): allowed: an integer from 1 to 65535'),
    ({"PORT": "65536"}, 'port = "65536" (environment variable PORT): allowed: an integer from 1 to 65535'),
    ({"PORT": "80x"}, 'port = "80x" (environment variable PORT): allowed: an integer'),
    ({"PORT": "8037.0"}, 'port = "8037.0" (environment variable PORT): allowed: an integer'),
    ({"DB_POOL_MAX": ""}, 'db_pool_max = "" (environment variable DB_POOL_MAX): allowed: an integer'),
    ({"SHUTDOWN_TIMEOUT_SECONDS": "nan"}, 'shutdown_timeout_seconds = "nan" (environment variable '
                                          'SHUTDOWN_TIMEOUT_SECONDS): allowed: a number from 0.1 to 3600'),
    ({"WS_SEND_TIMEOUT_SECONDS": "soon"}, 'ws_send_timeout_seconds = "soon"'),
    ({"LOG_LEVEL": "loud"}, 'log_level = "loud" (environment variable LOG_LEVEL): '
                            'allowed: one of debug, info, warning, error, critical'),
    ({"LOG_FORMAT": "xml"}, 'log_format = "xml" (environment variable LOG_FORMAT): '
                            'allowed: one of auto, json, console'),
    ({"ALLOWED_ORIGINS": "app.example.com"}, 'allowed_origins = "app.example.com" (environment variable '
                                             'ALLOWED_ORIGINS): allowed: a list of origins'),
    ({"DB_POOL_MIN": "20"}, "db_pool_min = 20 (environment variable DB_POOL_MIN) is more than "
                            "db_pool_max = 10 (default): db_pool_min must be at most db_pool_max"),
    ({"LISTENER_BACKOFF_MIN_SECONDS": "2", "LISTENER_BACKOFF_MAX_SECONDS": "1"},
     "listener_backoff_min_seconds = 2.0 (environment variable LISTENER_BACKOFF_MIN_SECONDS) is more than "
     "listener_backoff_max_seconds = 1.0 (environment variable LISTENER_BACKOFF_MAX_SECONDS)"),
    ({"AIAGENT_CONFIG": "/nonexistent/aiagent-live.toml"},
     "AIAGENT_CONFIG names /nonexistent/aiagent-live.toml, which is not a file"),
]

# (file text, the refusal after the file's path)
FILE_REFUSALS = [
    ("port = 8037.5\n", "port = 8037.5 ({path}): allowed: an integer from 1 to 65535"),
    ("port = true\n", "port = true ({path}): allowed: an integer"),
    ("ws_log_tail = -1\n", "ws_log_tail = -1 ({path}): allowed: an integer from 0 to"),
    ('host = 127\n', "host = 127 ({path}): allowed: text"),
    ('log_level = "verbose"\n', 'log_level = "verbose" ({path}): allowed: one of debug'),
    ("allowed_origins = [1]\n", "allowed_origins = [1] ({path}): allowed: a list of origins"),
    ("jwt_secret = 12345\n", "jwt_secret = *** ({path}): allowed: text"),
    ("db_pool_min = 5\ndb_pool_max = 2\n", "db_pool_min = 5 ({path}) is more than db_pool_max = 2 ({path})"),
    ("prot = 9000\n", "{path}: unknown key 'prot'; did you mean port?"),
    ("[server]\nport = 1\n", "{path}: unknown key 'server'"),
    ("port = \n", "{path}: not valid TOML: "),
]


@pytest.mark.parametrize("environ, refusal", ENVIRONMENT_REFUSALS)
def test_load_config_refuses_a_bad_environment_value_naming_it(environ, refusal, toml_file):
    with pytest.raises(ConfigError) as refused:
        load_config(None if "AIAGENT_CONFIG" in environ else toml_file(""), environ=environ)
    assert str(refused.value).startswith(refusal)


@pytest.mark.parametrize("text, refusal", FILE_REFUSALS)
def test_load_config_refuses_a_bad_file_value_naming_it(text, refusal, toml_file):
    path = toml_file(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert str(refused.value).startswith(refusal.format(path=path))


def test_secrets_never_appear_in_a_refusal(toml_file):
    path = toml_file('database_url = ["postgresql://u:hunter2@db/x"]\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert "hunter2" not in str(refused.value) and "database_url = ***" in str(refused.value)


@pytest.mark.parametrize("environ, refusal", ENVIRONMENT_REFUSALS[::2])
def test_serve_refuses_to_start_with_one_line_and_exit_code_2(environ, refusal, tmp_path):
    result = run_service("serve", cwd=tmp_path, DATABASE_URL="postgresql://127.0.0.1:1/none",
                         JWT_SECRET="x", **environ)
    assert result.returncode == 2, result
    assert result.stdout == "" and result.stderr.startswith(f"configuration error: {refusal}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("text, refusal", FILE_REFUSALS[::3])
def test_serve_refuses_a_bad_file_given_with_config(text, refusal, toml_file, tmp_path):
    path = toml_file(text)
    result = run_service("--config", str(path), "serve", cwd=tmp_path,
                         DATABASE_URL="postgresql://127.0.0.1:1/none", JWT_SECRET="x")
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"configuration error: {refusal.format(path=path)}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_config_command_prints_every_key_as_toml_with_its_description_and_secrets_masked(tmp_path):
    url = "postgresql://aiagent:hunter2@db.internal:5432/aiagent?sslmode=require"
    result = run_service("config", cwd=tmp_path, DATABASE_URL=url, JWT_SECRET="s3cret-value", PORT="9001",
                         LOG_LEVEL="DEBUG")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hunter2" not in out and "s3cret-value" not in out
    printed = tomllib.loads(out)
    assert set(printed) == set(FIELDS)
    assert printed["port"] == 9001 and printed["log_level"] == "debug"
    assert printed["database_url"] == "postgresql://aiagent:***@db.internal:5432/aiagent?sslmode=require"
    assert printed["jwt_secret"] == "***"
    for name, field in FIELDS.items():
        if name not in ("database_url", "jwt_secret", "port", "log_level"):
            default = list(field.default) if isinstance(field.default, tuple) else field.default
            assert printed[name] == default, name
        # Each key comes after its description, its default and what it allows.
        block = out.split(f"\n{name} = ")[0].rsplit("\n\n", 1)[-1]
        assert "# default: " in block and "allowed: " in block, name
    assert "# set by: environment variable PORT\nport = 9001" in out


def test_config_command_masks_a_password_in_a_key_value_connection_string(tmp_path):
    result = run_service("config", cwd=tmp_path, DATABASE_URL="host=db user=a password='p w' dbname=x")
    assert result.returncode == 0 and "p w" not in result.stdout
    assert tomllib.loads(result.stdout)["database_url"] == "host=db user=a password=*** dbname=x"


@pytest.mark.parametrize("data_dir", ["a-file/var", "/proc/aiagent-live/var"])
def test_serve_without_a_database_url_where_data_dir_cannot_be_used_says_what_to_set(tmp_path, data_dir):
    """Under a file, or where nothing can be created (not even by root)."""
    (tmp_path / "a-file").write_text("")
    result = run_service("serve", cwd=tmp_path, DATA_DIR=str(tmp_path / data_dir))
    assert result.returncode == 2, result
    assert result.stderr.startswith("configuration error: database_url is empty")
    assert "set DATABASE_URL, or DATA_DIR to a writable directory" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["DATABASE_URL", "PUSH_DATABASE_URL"])
@pytest.mark.parametrize("text", ["postgresql//app:hunter2@db/app", "postgresql://app:hunter2@[::1:1/app",
                                  "postgresql://app:hunter2@db/app?bogus=1", "host=db password=hunter2 port"])
def test_a_connection_string_libpq_cannot_read_is_refused_by_name_and_its_password_kept(key, text, tmp_path):
    environ = {"DATABASE_URL": "postgresql://127.0.0.1:1/none", "JWT_SECRET": "x", key: text}
    result = run_service("serve", cwd=tmp_path, **environ)
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"configuration error: {key.lower()} = *** (environment variable {key}): "
                                    "allowed: a PostgreSQL connection URL"), result.stderr
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr


def test_serve_with_a_database_it_cannot_reach_says_so_in_one_line_naming_the_setting(tmp_path):
    result = run_service("serve", cwd=tmp_path, DATABASE_URL="postgresql://app:hunter2@127.0.0.1:1/none",
                         JWT_SECRET="x")
    assert result.returncode == 1, result
    assert result.stderr.startswith("cannot reach the database (DATABASE_URL"), result.stderr
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr
