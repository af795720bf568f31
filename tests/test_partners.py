"""The partner directory (issue 14): the store contract on every store, the operator's
API (``/api/partners``), the caseworker's read-only view, a Redis cluster in which an
entry added on one node is offered on the other, and ``roundtable partners`` against
the state directory of a running server."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.redis_store import RedisStore
from signaling.sqlite_store import SqliteStore
from signaling.store import PartnerRecord, PartnerSave, StateStore
from tests.controlplane import RunningServer, link_token, running_server

BIN = Path(sys.executable).parent / "roundtable"


def _record(name: str, **kw: Any) -> PartnerRecord:
    values: dict[str, Any] = {
        "id": f"pt_{uuid.uuid4().hex[:16]}",
        "name": name,
        "type": "chamber",
        "rights": ("audio", "chat"),
        "valid_minutes": 45,
        "created_at": 1000,
    }
    values.update(kw)
    return PartnerRecord(**values)


# -- the store contract ---------------------------------------------------------------


async def test_store_keeps_partners_with_unique_names(store: StateStore) -> None:
    ihk = _record("IHK Köln", email="a@ihk.example", contact="Herr A")
    drv = _record("DRV Bund", type="pension_insurance", rights=())
    assert await store.save_partner(ihk, new=True) is PartnerSave.SAVED
    assert await store.save_partner(drv, new=True) is PartnerSave.SAVED
    # Sorted as people read names; every field comes back as stored (empty rights too).
    assert await store.list_partners() == [drv, ihk]
    assert await store.get_partner(ihk.id) == ihk
    assert await store.get_partner("pt_nope") is None
    # Case and spacing do not make a second entry, neither new nor by renaming.
    assert await store.save_partner(_record("ihk   KÖLN"), new=True) is PartnerSave.NAME_TAKEN
    renamed = _record("ihk köln", id=drv.id)
    assert await store.save_partner(renamed, new=False) is PartnerSave.NAME_TAKEN
    # An update keeps the id and the creation time; the old name is free again.
    changed = _record("DRV Nord", id=drv.id, created_at=2000, valid_minutes=90)
    assert await store.save_partner(changed, new=False) is PartnerSave.SAVED
    assert await store.get_partner(drv.id) == _record(
        "DRV Nord", id=drv.id, created_at=1000, valid_minutes=90
    )
    assert await store.save_partner(_record("DRV Bund"), new=True) is PartnerSave.SAVED
    assert await store.save_partner(_record("X", id="pt_gone"), new=False) is PartnerSave.MISSING
    assert await store.remove_partner(ihk.id)
    assert not await store.remove_partner(ihk.id)
    assert ihk.id not in {p.id for p in await store.list_partners()}
    assert await store.save_partner(_record("IHK Köln"), new=True) is PartnerSave.SAVED


async def test_sqlite_partners_written_by_another_process_are_read(tmp_path: Path) -> None:
    # `roundtable partners add` writes the file while `serve` holds it open.
    path = tmp_path / "state.sqlite3"
    serving, cli = SqliteStore(path), SqliteStore(path)
    try:
        entry = _record("Sprachmittler Süd", type="interpreter")
        assert await cli.save_partner(entry, new=True) is PartnerSave.SAVED
        assert await serving.list_partners() == [entry]
        assert await serving.save_partner(_record("sprachmittler süd"), new=True) is (
            PartnerSave.NAME_TAKEN
        )
        assert await cli.remove_partner(entry.id)
        assert await serving.list_partners() == []
    finally:
        await serving.close()
        await cli.close()


@pytest.mark.redis
async def test_redis_nodes_racing_for_one_name_make_one_entry(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    node_a, node_b = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    try:
        results = await asyncio.gather(
            *[
                (node_a if i % 2 else node_b).save_partner(_record("Kammer"), new=True)
                for i in range(10)
            ]
        )
        assert results.count(PartnerSave.SAVED) == 1
        assert len(await node_a.list_partners()) == len(await node_b.list_partners()) == 1
    finally:
        await node_a.close()
        await node_b.close()


# -- the API ----------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path) as srv:
        yield srv


async def call(
    server: RunningServer,
    method: str,
    path: str,
    key: str | None = "api",
    body: Any = None,
    **kw: Any,
) -> tuple[int, Any]:
    """``method path`` with the API key (``key="api"``), a token, or nothing."""
    token = server.config.api_key if key == "api" else key
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"{server.url}{path}", json=body, headers=headers, **kw
        ) as resp:
            if resp.status == 204:
                return 204, None
            assert resp.headers["Cache-Control"] == "no-store"
            return resp.status, await resp.json()


DRV = {
    "name": "DRV Bund",
    "type": "pension_insurance",
    "contact": "Frau Yilmaz",
    "email": "beratung@drv.example",
    "rights": ["chat", "audio", "video"],
    "valid_minutes": 60,
}


async def test_every_partner_route_needs_the_api_key(server: RunningServer) -> None:
    routes = [
        ("GET", "/api/partners"),
        ("POST", "/api/partners"),
        ("GET", "/api/partners/pt_x"),
        ("PUT", "/api/partners/pt_x"),
        ("DELETE", "/api/partners/pt_x"),
    ]
    caseworker = link_token((await server.create_room())["caseworker_url"])
    for method, path in routes:
        assert (await call(server, method, path, None, DRV))[1]["error"] == "api_key_missing"
        status, body = await call(server, method, path, "wrong", DRV)
        assert (status, body["error"]) == (401, "api_key_invalid")
        # A room token, even the host's, is not the operator's key.
        status, body = await call(server, method, path, caseworker, DRV)
        assert (status, body["error"]) == (401, "api_key_invalid")
    status, body = await call(server, "GET", "/api/partners")
    assert (status, body) == (200, {"partners": []})  # nothing was made by the refusals


async def test_crud(server: RunningServer) -> None:
    status, made = await call(server, "POST", "/api/partners", body=DRV)
    assert status == 201, made
    assert made["id"].startswith("pt_") and isinstance(made["created_at"], int)
    assert {k: made[k] for k in DRV} == {**DRV, "rights": ["audio", "video", "chat"]}
    pid = made["id"]
    assert await call(server, "GET", f"/api/partners/{pid}") == (200, made)
    # Defaults: type other, no contact or e-mail, the invite's rights and validity.
    status, ihk = await call(server, "POST", "/api/partners", body={"name": " IHK Köln "})
    assert status == 201
    assert {k: v for k, v in ihk.items() if k not in ("id", "created_at")} == {
        "name": "IHK Köln",
        "type": "other",
        "contact": None,
        "email": None,
        "rights": ["audio", "video", "see_client", "chat"],
        "valid_minutes": server.config.invite_minutes,
    }
    status, listed = await call(server, "GET", "/api/partners")
    assert [p["name"] for p in listed["partners"]] == ["DRV Bund", "IHK Köln"]
    # PUT replaces the entry (absent fields take their defaults), keeping id and date.
    status, changed = await call(
        server, "PUT", f"/api/partners/{pid}", body={"name": "DRV Nord", "email": ""}
    )
    assert status == 200, changed
    assert (changed["id"], changed["created_at"], changed["name"]) == (
        pid,
        made["created_at"],
        "DRV Nord",
    )
    assert changed["email"] is None and changed["type"] == "other"
    assert await call(server, "DELETE", f"/api/partners/{pid}") == (204, None)
    for method in ("GET", "PUT", "DELETE"):
        status, body = await call(server, method, f"/api/partners/{pid}", body=DRV)
        assert (status, body["error"]) == (404, "partner_not_found"), method
    status, body = await call(server, "GET", f"/api/partners/{'x' * 500}")
    assert (status, body["error"]) == (404, "partner_not_found")


async def test_duplicate_names_are_refused_with_a_clear_code(server: RunningServer) -> None:
    await call(server, "POST", "/api/partners", body=DRV)
    status, body = await call(server, "POST", "/api/partners", body={"name": "drv  BUND"})
    assert (status, body["error"]) == (409, "partner_exists")
    assert "drv  BUND" in body["message"]
    status, other = await call(server, "POST", "/api/partners", body={"name": "IHK"})
    status, body = await call(server, "PUT", f"/api/partners/{other['id']}", body=DRV)
    assert (status, body["error"]) == (409, "partner_exists")
    # Renaming an entry to its own name in other letters is no conflict.
    status, body = await call(server, "PUT", f"/api/partners/{other['id']}", body={"name": "ihk"})
    assert (status, body["name"]) == (200, "ihk")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 121},
        {"name": 5},
        {"name": "A", "type": "bank"},
        {"name": "A", "email": "no-at-sign"},
        {"name": "A", "email": "a b@c.de"},
        {"name": "A", "email": "a@" + "b" * 260 + ".de"},
        {"name": "A", "rights": ["moderate"]},
        {"name": "A", "rights": ["invite"]},
        {"name": "A", "rights": "audio"},
        {"name": "A", "valid_minutes": 0},
        {"name": "A", "valid_minutes": 241},
        {"name": "A", "valid_minutes": "30"},
        {"name": "A", "contact": "y" * 121},
        {"name": "A", "<script>": 1},
    ],
)
async def test_bodies_are_validated(server: RunningServer, body: dict[str, Any]) -> None:
    status, answer = await call(server, "POST", "/api/partners", body=body)
    assert (status, answer["error"]) == (400, "bad_request"), answer
    assert "<script>" not in answer["message"]
    status, made = await call(server, "POST", "/api/partners", body={"name": "Valid"})
    status, answer = await call(server, "PUT", f"/api/partners/{made['id']}", body=body)
    assert (status, answer["error"]) == (400, "bad_request"), answer
    assert (await call(server, "GET", "/api/partners"))[1]["partners"] == [made]


async def test_the_caseworker_reads_the_directory_and_nobody_else(server: RunningServer) -> None:
    _, made = await call(server, "POST", "/api/partners", body=DRV)
    room = await server.create_room()
    path = f"/api/rooms/{room['room']}/partners"
    status, body = await call(server, "GET", path, link_token(room["caseworker_url"]))
    assert status == 200
    expected = {k: v for k, v in made.items() if k != "created_at"}
    assert body == {"partners": [expected]}
    # The client and an invited partner may not browse it; nor a token of another room.
    status, body = await call(server, "GET", path, link_token(room["client_url"]))
    assert (status, body["error"]) == (403, "forbidden")
    _, invite = await server.invite(room["room"], link_token(room["caseworker_url"]))
    status, body = await call(server, "GET", path, link_token(invite["invite_url"]))
    assert (status, body["error"]) == (403, "forbidden")
    other = await server.create_room()
    status, body = await call(server, "GET", path, link_token(other["caseworker_url"]))
    assert (status, body["error"]) == (403, "token_wrong_room")
    assert (await call(server, "GET", path, None))[1]["error"] == "token_missing"
    # The operator's key is not a room token.
    assert (await call(server, "GET", path))[0] == 401


# -- a cluster on Redis -----------------------------------------------------------------


@pytest.mark.redis
async def test_a_partner_added_on_one_node_is_offered_on_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    shared = {
        "secret": secrets.token_urlsafe(48),
        "api_key": secrets.token_urlsafe(24),
        "redis_url": redis_url,
    }
    name = f"Bildungsträger {uuid.uuid4().hex[:6]}"
    async with (
        running_server(tmp_path / "a", **shared) as node_a,
        running_server(tmp_path / "b", **shared) as node_b,
    ):
        status, made = await call(node_a, "POST", "/api/partners", body={**DRV, "name": name})
        assert status == 201, made
        room = await node_b.create_room()
        path = f"/api/rooms/{room['room']}/partners"
        status, body = await call(node_b, "GET", path, link_token(room["caseworker_url"]))
        assert status == 200 and made["id"] in {p["id"] for p in body["partners"]}
        status, body = await call(node_b, "POST", "/api/partners", body={"name": name.upper()})
        assert (status, body["error"]) == (409, "partner_exists")
        assert (await call(node_b, "DELETE", f"/api/partners/{made['id']}"))[0] == 204
        status, body = await call(node_a, "GET", path, link_token(room["caseworker_url"]))
        assert made["id"] not in {p["id"] for p in body["partners"]}


# -- the command line -------------------------------------------------------------------


def cli(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")}
    clean.pop("REDIS_URL", None)
    clean.update(ROUNDTABLE_STATE_DIR=str(state), **(env or {}))
    return subprocess.run(
        [str(BIN), "partners", *args], env=clean, capture_output=True, text=True, timeout=60
    )


async def test_cli_changes_what_a_running_server_offers(
    tmp_path: Path, server: RunningServer
) -> None:
    state = server.config.state_dir
    run = await asyncio.to_thread(
        cli,
        state,
        "add",
        "DRV Bund",
        "--type",
        "pension_insurance",
        "--contact",
        "Frau Yilmaz",
        "--email",
        "beratung@drv.example",
        "--rights",
        "audio,chat",
        "--minutes",
        "90",
    )
    assert run.returncode == 0, run.stderr
    pid = run.stdout.strip()
    assert pid.startswith("pt_")
    # Which store it used goes to stderr, so a mistyped state directory is noticed.
    assert f"partner directory in {state / 'state.sqlite3'}" in run.stderr
    room = await server.create_room()
    status, body = await call(
        server, "GET", f"/api/rooms/{room['room']}/partners", link_token(room["caseworker_url"])
    )
    assert body["partners"] == [
        {
            "id": pid,
            "name": "DRV Bund",
            "type": "pension_insurance",
            "contact": "Frau Yilmaz",
            "email": "beratung@drv.example",
            "rights": ["audio", "chat"],
            "valid_minutes": 90,
        }
    ]
    # Added through the API, listed by the command, as a table and as JSON.
    await call(server, "POST", "/api/partners", body={"name": "IHK Köln", "type": "chamber"})
    run = await asyncio.to_thread(cli, state, "list")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "CONTACT", "E-MAIL", "RIGHTS", "MINUTES"]
    assert lines[1].split() == [
        pid,
        "DRV",
        "Bund",
        "pension_insurance",
        "Frau",
        "Yilmaz",
        "beratung@drv.example",
        "audio,chat",
        "90",
    ]
    assert "IHK Köln" in lines[2] and "chamber" in lines[2]
    run = await asyncio.to_thread(cli, state, "list", "--json")
    listed = json.loads(run.stdout)["partners"]
    assert [p["name"] for p in listed] == ["DRV Bund", "IHK Köln"]
    # Refusals say why and exit non-zero; nothing is changed by them.
    run = await asyncio.to_thread(cli, state, "add", "drv bund")
    assert run.returncode == 1 and "already" in run.stderr
    run = await asyncio.to_thread(cli, state, "add", "X", "--email", "nope")
    assert run.returncode == 2 and "email" in run.stderr
    run = await asyncio.to_thread(cli, state, "add", "X", "--rights", "audio,moderate")
    assert run.returncode == 2 and "rights" in run.stderr
    run = await asyncio.to_thread(cli, state, "add", "X", "--minutes", "500")
    assert run.returncode == 2 and "valid_minutes" in run.stderr
    # Removed by name (any case) or by id; the server stops offering it at once.
    run = await asyncio.to_thread(cli, state, "remove", "ihk KÖLN")
    assert run.returncode == 0, run.stderr
    run = await asyncio.to_thread(cli, state, "remove", pid)
    assert run.returncode == 0, run.stderr
    run = await asyncio.to_thread(cli, state, "remove", pid)
    assert run.returncode == 1 and "no partner" in run.stderr
    assert (await call(server, "GET", "/api/partners"))[1] == {"partners": []}


def test_cli_help_explains_the_directory(tmp_path: Path) -> None:
    run = cli(tmp_path, "--help")
    assert run.returncode == 0
    for words in ("dial-in form", "ROUNDTABLE_REDIS_URL", "add", "list", "remove", "--json"):
        assert words in run.stdout, words
    run = cli(tmp_path, "add", "--help")
    assert "--type" in run.stdout and "pension_insurance" in run.stdout
    assert "--rights" in run.stdout and "chat" in run.stdout


@pytest.mark.redis
def test_cli_uses_the_clusters_redis(tmp_path: Path, redis_url: str) -> None:
    name = f"Kammer {uuid.uuid4().hex[:6]}"
    env = {"ROUNDTABLE_REDIS_URL": redis_url}
    run = cli(tmp_path / "a", "add", name, env=env)
    assert run.returncode == 0, run.stderr
    # Another machine (another state directory) on the same Redis sees it.
    run = cli(tmp_path / "b", "list", "--json", env=env)
    assert "partner directory in Redis" in run.stderr
    assert name in {p["name"] for p in json.loads(run.stdout)["partners"]}
    assert cli(tmp_path / "b", "remove", name, env=env).returncode == 0
    run = cli(tmp_path / "b", "list", "--json", env=env)
    assert name not in {p["name"] for p in json.loads(run.stdout)["partners"]}
    run = cli(tmp_path, "list", env={"ROUNDTABLE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert run.returncode == 1 and "unreachable" in run.stderr
