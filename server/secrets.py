"""Generated secrets for a first start without configuration.

``roundtable serve`` with no ``ROUNDTABLE_SECRET`` / ``ROUNDTABLE_API_KEY`` creates them
once in ``<state dir>/secrets.json`` (mode 0600 in a 0700 directory) and reuses them on
every later start, so links stay valid across restarts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "secrets.json"


@dataclass(frozen=True, slots=True)
class Secrets:
    secret: str
    api_key: str
    path: Path
    created: bool


def _read(path: Path) -> dict[str, str]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Someone widened it; narrow it again rather than keep serving a readable key.
        log.warning("%s was readable by others (mode %o); setting 0600", path, mode)
        path.chmod(0o600)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def load(state_dir: Path) -> Secrets | None:
    path = state_dir / FILE_NAME
    if not path.exists():
        return None
    data = _read(path)
    return Secrets(str(data["secret"]), str(data["api_key"]), path, created=False)


def load_or_create(state_dir: Path) -> Secrets:
    existing = load(state_dir)
    if existing is not None:
        return existing
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / FILE_NAME
    data = {"secret": secrets.token_urlsafe(48), "api_key": secrets.token_urlsafe(32)}
    # O_EXCL: two servers starting at once must not overwrite each other's secrets.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        found = load(state_dir)
        assert found is not None
        return found
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return Secrets(data["secret"], data["api_key"], path, created=True)
