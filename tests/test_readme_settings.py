"""The README's settings table is the whole truth: every setting, its environment variable, none that does not exist."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from service.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _table_rows() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Configuration"):]
    rows = re.findall(r"^\| `([a-z_]+)` \| `([A-Z_]+)` \|", section, flags=re.MULTILINE)
    return dict(rows)


def test_every_setting_is_in_the_readme_table_with_its_environment_variable():
    documented = _table_rows()
    settings = {f.name for f in fields(Settings) if f.init}
    assert set(documented) == settings, (sorted(settings - set(documented)), sorted(set(documented) - settings))
    for name, variable in documented.items():
        assert variable == ENV_PREFIX + name.upper()


def _other_value(f) -> str | None:
    """A valid value for a setting that differs from its default, as an environment variable would give it."""
    default = Settings().__getattribute__(f.name)
    if isinstance(default, bool):
        return "false" if default else "true"
    if isinstance(default, (int, float)):
        return str(default * 2 or 7)
    if isinstance(default, list):
        return "https://a.example,https://b.example"
    return None


def test_each_documented_variable_really_sets_its_setting(tmp_path):
    for f in fields(Settings):
        value = _other_value(f) if f.init else None
        if value is None:
            continue
        loaded = Settings.load(environ={ENV_PREFIX + f.name.upper(): value, ENV_PREFIX + "DATABASE": str(tmp_path / "x.sqlite")})
        assert loaded.sources[f.name] == f"the environment ({ENV_PREFIX}{f.name.upper()})"
        assert getattr(loaded, f.name) != getattr(Settings(), f.name)


def test_the_shipped_example_of_trusted_clients_loads(tmp_path):
    from service.cds_hooks.auth import load_clients

    path = Path(__file__).resolve().parent.parent / "service" / "trust" / "example-clients.json"
    clients = load_clients(path)
    assert len(clients) == 1
    client = next(iter(clients.values()))
    assert client.jku and client.fhir_servers and not client.development_only
    settings = Settings.load(environ={}, overrides={"mode": "production", "trusted_clients": str(path), "public_base_url": "https://cds.example.org",
                                                    "database": str(tmp_path / "x.sqlite")})
    assert settings.trusted_clients == str(path)


def test_the_wsgi_entry_point_builds_the_application(tmp_path, monkeypatch):
    import importlib
    import sys

    monkeypatch.setenv(ENV_PREFIX + "DATABASE", str(tmp_path / "wsgi.sqlite"))
    sys.modules.pop("service.wsgi", None)
    wsgi = importlib.import_module("service.wsgi")
    assert wsgi.app.test_client().get("/healthz").status_code == 200
