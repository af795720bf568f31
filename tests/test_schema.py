"""One declaration of what clients may send and what the server answers, and the
documentation checked against it: events (``signaling.events.EVENTS``) and error codes
(``signaling.errors.ErrorCode``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from signaling.errors import STATUS_BY_CODE, ErrorCode
from signaling.events import EVENTS

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def _documented_client_events() -> set[str]:
    """Event names in the first column of every client → server table of protocol.md."""
    names: set[str] = set()
    in_client_table = False
    for line in PROTOCOL.splitlines():
        if "Client → server" in line:
            in_client_table = True
            continue
        if line.startswith("#") or (not line.startswith("|") and line.startswith("Server")):
            in_client_table = False
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "client → server":  # the chat table names the direction per row
            names.update(re.findall(r"`([^`]+)`", cells[1]))
        elif in_client_table and cells[0].startswith("`"):
            names.update(re.findall(r"`([^`]+)`", cells[0]))
    return names


def test_every_client_event_is_documented_and_nothing_else() -> None:
    assert _documented_client_events() == set(EVENTS)


def test_error_codes_are_one_type_with_a_status_and_documented() -> None:
    assert set(ErrorCode) == set(STATUS_BY_CODE)
    errors = PROTOCOL.split("## Errors", 1)[1].split("\n## ", 1)[0]
    # The list of codes, before the paragraph that maps them to HTTP statuses.
    codes = errors.split("HTTP status by code (", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", codes))
    assert {str(c) for c in ErrorCode} == listed


def _codes_in_source() -> set[str]:
    """First string arguments of everything that raises or counts a refusal by code."""
    callers = {"RoundtableError", "refused", "_bad"} | {
        n for n in dir(__import__("signaling.errors", fromlist=["x"])) if n[0].isupper()
    }
    found: set[str] = set()
    for path in (ROOT / "signaling").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in callers and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def test_every_code_the_source_uses_is_declared() -> None:
    used = _codes_in_source()
    assert used, "the scan found nothing: it no longer matches the source"
    assert used <= set(ErrorCode), used - set(ErrorCode)


def test_every_rest_body_field_is_documented_and_nothing_else() -> None:
    from signaling.bodies import BODIES, CreateInvite, CreateRoom, PartnerBody

    assert set(BODIES.values()) == {CreateRoom, CreateInvite, PartnerBody}
    # POST /api/rooms: the JSON object in its paragraph.
    paragraph = PROTOCOL.split("- `POST /api/rooms` ", 1)[1].split("→ 201", 1)[0]
    assert set(re.findall(r'"([a-z_]+)"', paragraph)) == set(CreateRoom.model_fields)
    # POST /api/rooms/{room}/invites: the field table.
    section = PROTOCOL.split("### Invites (REST)", 1)[1].split("\n201 ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert {re.findall(r"`([a-z_]+)`", r)[0] for r in rows} == set(CreateInvite.model_fields)
    # POST/PUT /api/partners: the field table of "Partner directory (REST)".
    section = PROTOCOL.split("### Partner directory (REST)", 1)[1].split("An entry is", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert {re.findall(r"`([a-z_]+)`", r)[0] for r in rows} == set(PartnerBody.model_fields)


def test_bodies_refuse_unknown_fields_and_loose_types_without_echoing_them() -> None:
    import pytest

    from signaling.bodies import CreateInvite, CreateRoom, parse_body
    from signaling.errors import BadRequest

    for model, body in (
        (CreateRoom, {"client_name": "A", "<script>": 1}),
        (CreateRoom, {"valid_minutes": "30"}),
        (CreateRoom, {"client_lobby": 1}),
        (CreateRoom, {"caseworker_name": "   "}),
        (CreateInvite, {"organisation": "DRV"}),
        (CreateInvite, {"organisation": "DRV", "name": "P", "rights": ["root"]}),
        (CreateInvite, {"organisation": "DRV", "name": "P", "email": "no-at-sign"}),
    ):
        with pytest.raises(BadRequest) as refused:
            parse_body(model, body)
        assert refused.value.code == "bad_request" and "<script>" not in refused.value.message
    ok = parse_body(CreateInvite, {"organisation": " DRV ", "name": "P", "email": ""})
    assert (ok.organisation, ok.email, ok.rights) == (
        "DRV",
        None,
        ["audio", "video", "see_client", "chat"],
    )
