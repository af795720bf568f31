"""The one settings object: what it reads, what it refuses, and that ``serve --help``,
``deploy/env.example`` and ``docs/deploy.md`` say exactly what it declares."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Config, ConfigError, env_name
from server.settings_doc import DOC_BEGIN, docs_section, env_example, markdown_table, settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "roundtable"


def _squeeze(text: str) -> str:
    """Text without whitespace: argparse wraps help lines (and breaks at hyphens)."""
    return re.sub(r"\s+", "", text)


def test_shared_fields_from_the_environment(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    config = Config.from_env(
        {
            "ROUNDTABLE_TLS_CERT": str(cert),
            "ROUNDTABLE_TLS_KEY": str(key),
            "ROUNDTABLE_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7",
            "ROUNDTABLE_TURN_URLS": "turn:t.example:3478?transport=udp,turns:t.example:443?transport=tcp",
            "ROUNDTABLE_TURN_SECRET": "coturn-secret",
            "ROUNDTABLE_TURN_TTL": "3600",
            "ROUNDTABLE_ICE_POLICY": "relay",
            "ROUNDTABLE_MEDIA_PORT": "0",
            "ROUNDTABLE_MEDIA_PORTS": "40000-40999",
            "ROUNDTABLE_ANNOUNCED_IP": "203.0.113.5",
            "ROUNDTABLE_REDIS_URL": "redis://r:6379/0",
            "ROUNDTABLE_PORT": " 8443 ",
        }
    )
    assert (config.tls_cert, config.tls_key) == (cert, key)
    assert config.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32")
    assert config.turn_urls == (
        "turn:t.example:3478?transport=udp",
        "turns:t.example:443?transport=tcp",
    )
    assert config.turn_secret == "coturn-secret" and "coturn-secret" not in repr(config)
    assert config.turn_ttl == 3600 and config.ice_policy == "relay"
    assert config.media_port == 0 and config.media_ports == (40000, 40999)
    assert config.announced_ip == "203.0.113.5"
    assert config.redis_url == "redis://r:6379/0" and config.port == 8443


def test_defaults_and_the_redis_alias() -> None:
    config = Config.from_env({})
    assert config.media_port == 40000 and config.ice_policy == "all"
    assert config.tls_cert is None and config.trusted_proxies == () and config.turn_ttl is None
    assert Config.from_env({"REDIS_URL": "redis://old"}).redis_url == "redis://old"
    both = {"REDIS_URL": "redis://old", "ROUNDTABLE_REDIS_URL": "redis://new"}
    assert Config.from_env(both).redis_url == "redis://new"
    # Blank is unset, as in a compose file's `ROUNDTABLE_X=`.
    assert Config.from_env({"ROUNDTABLE_PORT": ""}).port == 8080


def test_flags_win_and_direct_construction_reads_no_environment(monkeypatch) -> None:
    monkeypatch.setenv("ROUNDTABLE_PORT", "9000")
    assert Config.from_env(port=9001).port == 9001
    assert Config.from_env().port == 9000
    assert Config(port=1).port == 1 and Config().port == 8080
    changed = Config(port=1).with_(max_participants=3)
    assert changed.port == 1 and changed.max_participants == 3
    with pytest.raises(ConfigError):
        Config().with_(ice_policy="sometimes")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ROUNDTABLE_ICE_POLICY": "none"}, "ROUNDTABLE_ICE_POLICY"),
        ({"ROUNDTABLE_MEDIA_PORTS": "40000"}, "ROUNDTABLE_MEDIA_PORTS"),
        ({"ROUNDTABLE_MEDIA_PORTS": "41000-40000"}, "ROUNDTABLE_MEDIA_PORTS"),
        ({"ROUNDTABLE_MEDIA_PORT": "70000"}, "ROUNDTABLE_MEDIA_PORT"),
        ({"ROUNDTABLE_TRUSTED_PROXIES": "10.0.0.0/8,proxy.lan"}, "proxy.lan"),
        ({"ROUNDTABLE_TLS_CERT": "/etc/hostname"}, "set both or neither"),
        (
            {"ROUNDTABLE_TLS_CERT": "/nonexistent.pem", "ROUNDTABLE_TLS_KEY": "/etc/hostname"},
            "no such file",
        ),
        ({"ROUNDTABLE_ANNOUNCED_IP": "my-host"}, "ROUNDTABLE_ANNOUNCED_IP"),
        ({"ROUNDTABLE_TURN_URLS": "http://turn.example"}, "ROUNDTABLE_TURN_URLS"),
        ({"ROUNDTABLE_TURN_URLS": "turn:turn.example"}, "ROUNDTABLE_TURN_SECRET"),
        ({"ROUNDTABLE_TURN_TTL": "5"}, "ROUNDTABLE_TURN_TTL"),
        ({"ROUNDTABLE_ICE_POLICY": "relay"}, "ROUNDTABLE_TURN_URLS"),
        ({"ROUNDTABLE_PORT": "eighty"}, "ROUNDTABLE_PORT"),
        ({"ROUNDTABLE_MAX_PARTICIPANTS": "1"}, "ROUNDTABLE_MAX_PARTICIPANTS"),
        ({"ROUNDTABLE_PUBLIC_URL": "talk.example.org"}, "ROUNDTABLE_PUBLIC_URL"),
    ],
)
def test_invalid_settings_name_their_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Config.from_env(env)


def test_a_secret_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({"ROUNDTABLE_SECRET": "too-short-but-private"})
    assert "ROUNDTABLE_SECRET" in str(err.value) and "private" not in str(err.value)


def test_serve_refuses_a_bad_flag_with_the_variable_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")}
    env["ROUNDTABLE_STATE_DIR"] = str(tmp_path)
    out = subprocess.run(
        [str(BIN), "serve", "--media-ports", "40000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "ROUNDTABLE_MEDIA_PORTS" in out.stderr, out


# -- the reference cannot drift ---------------------------------------------------------


def test_every_setting_is_in_serve_help() -> None:
    out = subprocess.run(
        [str(BIN), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert out.returncode == 0, out
    text = _squeeze(out.stdout)
    declared = settings()
    assert {s.field for s in declared} == set(Config.model_fields)
    for s in declared:
        assert s.description and s.default, s
        for piece in (*s.env, s.description, s.default, s.flag or ""):
            assert _squeeze(piece) in text, (s.field, piece)


def test_env_example_is_generated_from_the_settings() -> None:
    path = ROOT / "deploy" / "env.example"
    assert path.read_text() == env_example(), (
        "deploy/env.example is out of date: roundtable settings --format env > deploy/env.example"
    )
    text = path.read_text()
    for s in settings():
        assert re.search(rf"^# {re.escape(s.env[0])}=", text, re.M), s.env[0]
        assert s.description in text and s.default in text


def test_docs_table_is_generated_from_the_settings() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert DOC_BEGIN in doc
    assert docs_section(doc) == markdown_table(), (
        "the settings table in docs/deploy.md is out of date: paste "
        "`roundtable settings --format markdown` between its markers"
    )
    for field in Config.model_fields:
        assert f"`{env_name(field)}`" in doc
