import os
import stat

import pytest
from django.conf import settings
from django.db import connection

from comfyhub import config
from tests.conftest import manage

ENV = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}


def test_a_bad_port_stops_manage_py_with_one_line_naming_the_variable(tmp_path):
    env = {**ENV, "COMFYHUB_DATA_DIR": str(tmp_path), "COMFYHUB_PORT": "notaport"}
    result = manage("check", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "COMFYHUB_PORT" in lines[0] and "integer" in lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMFYHUB_HOST", "my laptop"),
        ("COMFYHUB_PORT_RANGE", "4100-4001"),
        ("COMFYHUB_DATABASE_URL", "mysql://x/y"),
        ("COMFYHUB_REDIS_URL", "http://127.0.0.1:6379"),
        ("COMFYHUB_DEBUG", "maybe"),
        ("COMFYHUB_MAX_LOST_ATTEMPTS", "0"),
        ("COMFYHUB_REGISTRY_URL", "ftp://api.comfy.org"),
        ("COMFYHUB_INSTALLER", "conda"),
        ("COMFYHUB_TORCH_BACKEND", "cuda"),
        ("COMFYHUB_PROTECTED_PACKAGES", "torch,-e ./evil"),
        ("COMFYHUB_RESOLVE_AS_OF", "last tuesday"),
    ],
)
def test_each_bad_value_is_named_in_the_error(tmp_path, name, value):
    env = {**ENV, "COMFYHUB_DATA_DIR": str(tmp_path), name: value}
    result = manage("check", env=env)
    assert result.returncode == 2
    assert name in result.stderr and "Traceback" not in result.stderr


def test_envint_accepts_values_in_range(monkeypatch):
    monkeypatch.setenv("X_PORT", "4001")
    assert config.envint("X_PORT", 1, 1, 65535) == 4001


def test_envint_rejects_values_out_of_range(monkeypatch):
    monkeypatch.setenv("X_PORT", "70000")
    with pytest.raises(config.ConfigError, match="X_PORT must be an integer from 1 to 65535"):
        config.envint("X_PORT", 1, 1, 65535)


@pytest.mark.parametrize(
    ("value", "setting"),
    [
        ("", "commit"),
        ("Latest", "latest"),
        ("2026-01-08", "2026-01-08T23:59:59Z"),
        ("2026-01-08T21:47:02Z", "2026-01-08T21:47:02Z"),
        ("2026-01-08T23:47:02+02:00", "2026-01-08T21:47:02Z"),
        ("2026-01-08T21:47", "2026-01-08T21:47:00Z"),
    ],
)
def test_resolve_as_of_is_a_rule_or_a_utc_cut_off_uv_accepts(monkeypatch, value, setting):
    monkeypatch.setenv("COMFYHUB_RESOLVE_AS_OF", value)
    assert config.envasof("COMFYHUB_RESOLVE_AS_OF") == setting


def test_database_url_becomes_a_postgres_entry():
    db = config.database_from_url("V", "postgresql://me:p%40ss@db.local:5433/hub")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"]) == ("hub", "me", "p@ss")
    assert (db["HOST"], db["PORT"]) == ("db.local", "5433")


def test_secret_key_is_generated_once_into_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYHUB_SECRET_KEY", raising=False)
    first = config.secret_key(tmp_path)
    assert len(first) > 40
    assert config.secret_key(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


def test_loopback_hosts_are_recognised():
    assert config.is_loopback("127.0.0.1") and config.is_loopback("::1")
    assert config.is_loopback("localhost")
    assert not config.is_loopback("0.0.0.0") and not config.is_loopback("192.0.2.7")


def test_a_non_loopback_host_turns_on_login_and_follows_allowed_hosts(tmp_path):
    env = {**ENV, "COMFYHUB_DATA_DIR": str(tmp_path), "COMFYHUB_HOST": "0.0.0.0"}
    code = (
        "from django.conf import settings as s; "
        "print(s.LOGIN_REQUIRED, s.ALLOWED_HOSTS, s.MIDDLEWARE[-1])"
    )
    result = manage("shell", "-v0", "-c", code, env=env)
    login_mw = "django.contrib.auth.middleware.LoginRequiredMiddleware"
    assert result.stdout.strip() == f"True ['*'] {login_mw}"


def test_the_default_host_needs_no_login_and_allows_only_loopback_names():
    assert settings.LOGIN_REQUIRED is False
    assert "*" not in settings.ALLOWED_HOSTS and "127.0.0.1" in settings.ALLOWED_HOSTS


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
    reason="WAL and IMMEDIATE transactions are SQLite settings; this run uses PostgreSQL",
)
@pytest.mark.django_db
def test_sqlite_runs_in_wal_mode_with_immediate_transactions():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
    assert connection.transaction_mode == "IMMEDIATE"
