"""Which configuration `serve` runs with: defaults, file, environment, command line, in that order, and no silent
fall-back to development mode when a production set-up binds to loopback (as it does behind a local proxy)."""

from __future__ import annotations

import json

import pytest

import service.server
from service.cli import main
from service.config import ENV_PREFIX, Settings


@pytest.fixture
def started(monkeypatch):
    """The settings `serve` would start gunicorn with (gunicorn itself is not started)."""
    runs = []
    monkeypatch.setattr(service.server, "run", lambda host, port, settings: runs.append(settings))
    for name in ("CONFIG", "MODE", "TRUSTED_CLIENTS", "DATABASE", "PUBLIC_BASE_URL", "TIMEZONE"):
        monkeypatch.delenv(ENV_PREFIX + name, raising=False)
    return runs


@pytest.fixture
def clients(tmp_path):
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": "https://ehr.example.org", "jku": ["https://ehr.example.org/jwks.json"]}]}))
    return path


def test_a_production_file_is_production_on_loopback(started, clients, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mode": "production", "trusted_clients": str(clients), "public_base_url": "https://cds.example.org",
                                  "database": str(tmp_path / "prod.sqlite")}))
    monkeypatch.setenv(ENV_PREFIX + "CONFIG", str(config))
    assert main(["serve", "--host", "127.0.0.1", "--port", "18998"]) == 0
    settings = started[-1]
    assert settings.mode == "production" and settings.sources["mode"] == f"the file {config}"
    err = capsys.readouterr().err
    assert "(production mode)" in err
    assert f"mode: production (from the file {config})" in err
    assert f"trusted_clients: {clients} (from the file {config})" in err
    assert f"database: {tmp_path / 'prod.sqlite'} (from the file {config})" in err


def test_the_environment_beats_the_file_and_the_command_line_beats_both(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"timezone": "Europe/Paris", "database": str(tmp_path / "file.sqlite")}))
    environ = {ENV_PREFIX + "CONFIG": str(config), ENV_PREFIX + "TIMEZONE": "Asia/Tokyo"}
    settings = Settings.load(environ=environ, overrides={"timezone": "America/New_York"}, defaults={"mode": "development"})
    assert settings.timezone == "America/New_York" and settings.sources["timezone"] == "the command line"
    assert settings.database == str(tmp_path / "file.sqlite") and settings.sources["database"] == f"the file {config}"
    assert settings.mode == "development" and settings.sources["mode"] == "the address served (default)"
    assert Settings.load(environ=environ, defaults={"timezone": "UTC"}).timezone == "Asia/Tokyo"
    assert Settings.load(environ={}, defaults={"timezone": "Europe/Paris"}).sources["request_budget"] == "built-in default"


def test_with_nothing_set_loopback_is_development_and_says_so(started, capsys):
    assert main(["serve", "--port", "18997"]) == 0
    assert started[-1].mode == "development"
    assert "mode: development (from the address served (default))" in capsys.readouterr().err


def test_development_mode_with_trusted_clients_is_refused(started, clients, monkeypatch, capsys):
    monkeypatch.setenv(ENV_PREFIX + "TRUSTED_CLIENTS", str(clients))
    assert main(["serve", "--port", "18996"]) == 2
    err = capsys.readouterr().err
    assert "refusing development mode with trusted clients configured" in err and f"{ENV_PREFIX}TRUSTED_CLIENTS" in err
    monkeypatch.setenv(ENV_PREFIX + "MODE", "development")
    assert main(["serve", "--port", "18996"]) == 2
    assert not started


def test_development_mode_set_by_the_environment_off_loopback_needs_insecure(started, monkeypatch, capsys):
    monkeypatch.setenv(ENV_PREFIX + "MODE", "development")
    assert main(["serve", "--host", "0.0.0.0", "--port", "18995"]) == 2
    assert "refusing development mode on 0.0.0.0 (mode from the environment (BACK_SPASM_CDS_MODE))" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--port", "18995", "--insecure"]) == 0
    assert started[-1].mode == "development"


def test_the_start_lines_never_show_a_database_password(started, monkeypatch, capsys):
    from service.cli import without_password

    assert without_password("postgresql://cds:s3cret@db.example.org:5432/cds") == "postgresql://cds:***@db.example.org:5432/cds"
    assert without_password("postgresql://cds@db.example.org/cds") == "postgresql://cds@db.example.org/cds"
    assert without_password("/var/lib/cds/cds.sqlite") == "/var/lib/cds/cds.sqlite"
    monkeypatch.setattr("service.config.Settings.check", lambda self: None)
    monkeypatch.setenv(ENV_PREFIX + "DATABASE", "postgresql://cds:s3cret@db.example.org:5432/cds")
    assert main(["serve", "--port", "18994"]) == 0
    err = capsys.readouterr().err
    assert "s3cret" not in err and "postgresql://cds:***@db.example.org:5432/cds" in err
