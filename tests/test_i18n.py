"""Every error the server can send has words in German and English on the page.

The codes come from the server's own source (``signaling/errors.py`` and every place that
raises a ``RoundtableError`` with a code), the words from ``web/i18n.js`` itself (loaded
by node, as the browser loads it): a new code without a translation fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import signaling.api  # noqa: F401  (loads every module that defines error classes)
import signaling.rooms  # noqa: F401
from signaling.errors import STATUS_BY_CODE, RoundtableError

ROOT = Path(__file__).resolve().parents[1]


def _error_classes() -> list[str]:
    """Names of RoundtableError and every subclass of it (signaling.errors and elsewhere)."""
    seen: list[type] = [RoundtableError]
    for cls in seen:
        seen.extend(c for c in cls.__subclasses__() if c not in seen)
    return [c.__name__ for c in seen]


# `SomeError("code", …)` (any RoundtableError class) and `_bad("code", …)` (tokens.py).
_CALLERS = "|".join([*_error_classes(), "_bad"])
_RAISED = re.compile(rf"""\b(?:{_CALLERS})\(\s*["']([a-z_]+)["']""")


def _strings() -> dict[str, dict[str, str]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing (make test installs npm, which brings it)")
    script = (
        "const m = await import(process.argv[1]);process.stdout.write(JSON.stringify(m.STRINGS));"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script, (ROOT / "web" / "i18n.js").as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def _raised_codes() -> set[str]:
    codes: set[str] = set()
    # sfu/ codes reach clients only through signaling.rooms.negotiation._media_error, which maps them.
    for folder in ("signaling", "server"):
        for path in (ROOT / folder).rglob("*.py"):
            codes |= set(_RAISED.findall(path.read_text()))
    return codes


def test_every_raised_code_is_a_known_code() -> None:
    raised = _raised_codes()
    assert len(raised) > 20, raised
    assert raised <= set(STATUS_BY_CODE), sorted(raised - set(STATUS_BY_CODE))


@pytest.mark.parametrize("lang", ["de", "en"])
def test_every_error_code_is_translated(lang: str) -> None:
    strings = _strings()[lang]
    # Codes the page makes up itself for failures that never reach the server.
    codes = set(STATUS_BY_CODE) | _raised_codes() | {"timeout", "media", "unknown"}
    missing = sorted(c for c in codes if not strings.get(f"error.{c}"))
    assert missing == [], f"{lang}: no text for {missing}"


def test_both_languages_have_the_same_keys() -> None:
    strings = _strings()
    assert sorted(set(strings["de"]) ^ set(strings["en"])) == []
