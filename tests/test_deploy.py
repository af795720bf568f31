"""The deployment kit in deploy/ matches the server it deploys: every variable it sets is
a setting roundtable reads, the coturn configuration keeps the relay out of private
networks (a real coturn with it: tests/test_turn.py), and the container's health check
works against a real server.
(`docker build` is not available here: the files are parsed instead.)"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import yaml

from server.config import Config, env_names
from tests.controlplane import running_server

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS = {name for field in Config.model_fields for name in env_names(field)}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_sets_only_settings_that_exist() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"roundtable", "redis", "coturn", "caddy"} <= set(services)
    roundtable = _environment(services["roundtable"])
    assert roundtable, "compose.yaml's roundtable service sets no environment"
    unknown = sorted(set(roundtable) - SETTINGS)
    assert unknown == [], f"compose.yaml sets variables roundtable does not read: {unknown}"
    # No other service pretends to configure roundtable either.
    for name, service in services.items():
        for key in _environment(service):
            if key.startswith("ROUNDTABLE_") or key == "REDIS_URL":
                assert key in SETTINGS, (name, key)
    # What the kit relies on.
    assert roundtable["ROUNDTABLE_TRUSTED_PROXIES"] == "127.0.0.1"
    assert roundtable["ROUNDTABLE_PUBLIC_URL"].startswith("https://")
    assert "turns:" in roundtable["ROUNDTABLE_TURN_URLS"]
    assert services["roundtable"]["ulimits"]["nofile"] == 65536
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis
    build = services["roundtable"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), volume


def test_dockerfile_is_multi_stage_non_root_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*CMD", text, re.M | re.S)
    assert "deploy/healthcheck.py" in text and (DEPLOY / "healthcheck.py").is_file()
    env = set(re.findall(r"\b(ROUNDTABLE_[A-Z_]+)=", text))
    assert env and env <= SETTINGS, env - SETTINGS


def test_systemd_unit_is_hardened_and_sets_only_settings() -> None:
    text = (DEPLOY / "roundtable.service").read_text()
    lines = {line.strip() for line in text.splitlines() if not line.startswith("#")}
    for wanted in (
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "User=roundtable",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert wanted in lines, wanted
    env = set(re.findall(r"^Environment=(\w+)=", text, re.M))
    assert env and env <= SETTINGS, env - SETTINGS


def _turn_options() -> list[tuple[str, str | None]]:
    out = []
    for raw in (DEPLOY / "turnserver.conf").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((key, value or None))
    return out


def test_turnserver_conf_keeps_the_relay_to_credential_holders_and_out_of_private_networks() -> (
    None
):
    options = _turn_options()
    keys = {k for k, _ in options}
    assert {"use-auth-secret", "no-multicast-peers", "no-tcp-relay", "fingerprint"} <= keys
    assert ("tls-listening-port", "443") in options
    assert "allow-loopback-peers" not in keys
    denied = {v for k, v in options if k == "denied-peer-ip"}
    # The operator's networks: RFC 1918, loopback, link-local (cloud metadata), CGNAT,
    # unique-local and link-local IPv6, IPv4-mapped IPv6. A real coturn with this file
    # refusing to relay there: tests/test_turn.py.
    for needed in (
        "10.0.0.0-10.255.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
        "127.0.0.0-127.255.255.255",
        "169.254.0.0-169.254.255.255",
        "100.64.0.0-100.127.255.255",
        "::1",
        "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:0.0.0.0-::ffff:255.255.255.255",
    ):
        assert needed in denied, needed
    # The realm, secret and addresses come from compose.yaml's command line.
    coturn = " ".join(_compose()["services"]["coturn"]["command"])
    for flag in ("--realm=", "--static-auth-secret=", "--listening-ip=", "--cert=", "--pkey="):
        assert flag in coturn, flag


async def _healthcheck(port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEPLOY / "healthcheck.py"),
        env={"ROUNDTABLE_HOST": "0.0.0.0", "ROUNDTABLE_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_container_health_check_against_a_real_server(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert await _healthcheck(port) == 0
    assert await _healthcheck(port) == 1
