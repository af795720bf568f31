"""``StateStore`` in a SQLite file in the state directory: the embedded default.

A ``kill -9`` and restart must not let a removed partner back in nor reopen an ended
session, so what ``MemoryStore`` keeps is also written to ``<state dir>/state.sqlite3``
and read back at start. No server to run: the standard library's ``sqlite3`` is enough.

Why it is shaped like this:
- **Reads never touch the disk.** The whole (small) state is mirrored in memory by the
  ``MemoryStore`` this class extends; a join checks revocations without any I/O.
- **Writes go to one worker thread**, never the event loop: a commit with
  ``synchronous=FULL`` waits for ``fsync``, which can take tens of milliseconds on a busy
  disk, and the loop also carries media and every other participant's signalling. One
  thread keeps writes in order and the connection on one thread. Writes are rare (a room
  created or ended, a participant removed, an invite used) so one thread is plenty.
- **The mirror changes before the write is awaited**, in the same loop step as the check
  (``use_invite``): two joins with one invite cannot both win, and the caller's ack waits
  until the fact is on disk.
- **One process per state directory.** Two processes sharing the file would not see each
  other's mirror; several nodes share state through Redis (``REDIS_URL``) instead.
- **The partner directory is the exception: read from the file every time**, not from
  the mirror, because ``roundtable partners add`` writes it from another process while
  ``serve`` runs. It is read when a caseworker opens the dial-in form, not per packet or
  join, and SQLite's locking (WAL, a busy timeout) makes the two processes take turns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from signaling.store import (
    InviteRecord,
    MemoryStore,
    PartnerRecord,
    PartnerSave,
    RoomRecord,
    sorted_partners,
)

log = logging.getLogger(__name__)

FILE_NAME = "state.sqlite3"
# Forget expired entries at most this often (they are refused as expired anyway).
PRUNE_EVERY_SECONDS = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0
);
-- closed rooms, revoked jtis, used invites, revoked invites: each with its token's end.
CREATE TABLE IF NOT EXISTS marks (
    kind TEXT NOT NULL, key TEXT NOT NULL, until INTEGER NOT NULL, PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS invites (
    room TEXT NOT NULL, id TEXT NOT NULL, jti TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (room, id)
);
-- the partner directory; name_key (partner_key) keeps names unique as people read them.
CREATE TABLE IF NOT EXISTS partners (
    id TEXT PRIMARY KEY, name_key TEXT NOT NULL UNIQUE, data TEXT NOT NULL
);
"""
# Seconds a write waits for the other process (``roundtable partners`` beside ``serve``).
BUSY_TIMEOUT_SECONDS = 10.0

_PRUNE = (
    "DELETE FROM marks WHERE until < ?1",
    "DELETE FROM invites WHERE expires_at < ?1",
    "DELETE FROM rooms WHERE expires_at < ?1 AND closed = 0",
)


class SqliteStore(MemoryStore):
    """Durable single-process store: a ``MemoryStore`` mirror written through to SQLite."""

    def __init__(self, path: Path, now: Callable[[], float] = time.time) -> None:
        super().__init__(now)
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Opened and read here, once, before the server takes connections; afterwards the
        # connection is used only by the worker thread.
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._epoch = self._load()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roundtable-store")
        self._pruned = self._now()

    def _load(self) -> int:
        db, now = self._db, int(self._now())
        for statement in _PRUNE:
            db.execute(statement, (now,))
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None:
            # A new (or deleted) file: tokens issued before now may belong to people who
            # were removed and are no longer recorded (``StateStore.epoch``).
            epoch = now
            db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (str(epoch),))
        else:
            epoch = int(row[0])
        for room_id, created, expires, closed in db.execute("SELECT * FROM rooms"):
            self._rooms[room_id] = RoomRecord(room_id, created, expires, bool(closed))
        tables = self._tables()
        for kind, key, until in db.execute("SELECT kind, key, until FROM marks"):
            if kind in tables:
                tables[kind][key] = until
        for room_id, invite_id, jti, expires in db.execute("SELECT * FROM invites"):
            self._invites[(room_id, invite_id)] = InviteRecord(invite_id, room_id, jti, expires)
        log.info(
            "state store %s: %d rooms, %d revocations loaded",
            self.path,
            len(self._rooms),
            len(self._revoked),
        )
        return epoch

    def _tables(self) -> dict[str, dict[str, int]]:
        return {
            "closed": self._closed,
            "revoked": self._revoked,
            "used_invite": self._used_invites,
            "revoked_invite": self._revoked_invites,
        }

    # -- the worker thread ----------------------------------------------------------------

    def _run(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        batch = list(statements)
        now = self._now()
        if now - self._pruned > PRUNE_EVERY_SECONDS:
            self._pruned = now
            batch.extend((sql, (int(now),)) for sql in _PRUNE)
        await asyncio.get_running_loop().run_in_executor(self._pool, self._run, batch)

    def _mark(self, kind: str, key: str, until: int) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT OR REPLACE INTO marks (kind, key, until) VALUES (?, ?, ?)",
            (kind, key, int(until)),
        )

    @staticmethod
    def _room_row(room: RoomRecord) -> tuple[str, tuple[Any, ...]]:
        return (
            "INSERT OR REPLACE INTO rooms (id, created_at, expires_at, closed) VALUES (?, ?, ?, ?)",
            (room.id, room.created_at, room.expires_at, int(room.closed)),
        )

    # -- StateStore -------------------------------------------------------------------------

    async def epoch(self) -> int:
        return self._epoch

    async def put_room(self, room: RoomRecord) -> None:
        await super().put_room(room)
        await self._write(self._room_row(room))

    async def close_room(self, room_id: str, until: int) -> None:
        await super().close_room(room_id, until)
        statements = [self._mark("closed", room_id, until)]
        room = self._rooms.get(room_id)
        if room is not None:
            statements.append(self._room_row(room))
        await self._write(*statements)

    async def revoke_jti(self, jti: str, until: int) -> None:
        await super().revoke_jti(jti, until)
        await self._write(self._mark("revoked", jti, until))

    async def use_invite(self, jti: str, until: int) -> bool:
        if not await super().use_invite(jti, until):
            return False
        await self._write(self._mark("used_invite", jti, until))
        return True

    async def put_invite(self, invite: InviteRecord) -> None:
        await super().put_invite(invite)
        await self._write(
            (
                "INSERT OR REPLACE INTO invites (room, id, jti, expires_at) VALUES (?, ?, ?, ?)",
                (invite.room, invite.id, invite.jti, invite.expires_at),
            )
        )

    async def revoke_invite(self, jti: str, until: int) -> None:
        await super().revoke_invite(jti, until)
        await self._write(self._mark("revoked_invite", jti, until))

    # -- the partner directory: always the file (see the module's docstring) -------------

    async def _in_worker(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self._db)

    async def list_partners(self) -> list[PartnerRecord]:
        def read(db: sqlite3.Connection) -> list[PartnerRecord]:
            rows = db.execute("SELECT data FROM partners").fetchall()
            return sorted_partners(PartnerRecord.from_dict(json.loads(r[0])) for r in rows)

        return await self._in_worker(read)

    async def get_partner(self, partner_id: str) -> PartnerRecord | None:
        def read(db: sqlite3.Connection) -> PartnerRecord | None:
            row = db.execute("SELECT data FROM partners WHERE id = ?", (partner_id,)).fetchone()
            return None if row is None else PartnerRecord.from_dict(json.loads(row[0]))

        return await self._in_worker(read)

    async def save_partner(self, partner: PartnerRecord, *, new: bool) -> PartnerSave:
        def write(db: sqlite3.Connection) -> PartnerSave:
            # IMMEDIATE: the check and the write are one step for every process.
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT data FROM partners WHERE id = ?", (partner.id,)).fetchone()
                taken = db.execute(
                    "SELECT 1 FROM partners WHERE name_key = ? AND id != ?",
                    (partner.key, partner.id),
                ).fetchone()
                if row is None and not new:
                    outcome = PartnerSave.MISSING
                elif taken is not None:
                    outcome = PartnerSave.NAME_TAKEN
                else:
                    record = partner
                    if row is not None:
                        created = PartnerRecord.from_dict(json.loads(row[0])).created_at
                        record = dataclasses.replace(partner, created_at=created)
                    db.execute(
                        "INSERT OR REPLACE INTO partners (id, name_key, data) VALUES (?, ?, ?)",
                        (record.id, record.key, json.dumps(record.to_dict())),
                    )
                    outcome = PartnerSave.SAVED
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return outcome

        return await self._in_worker(write)

    async def remove_partner(self, partner_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM partners WHERE id = ?", (partner_id,)).rowcount > 0

        return await self._in_worker(write)

    async def close(self) -> None:
        # Pending writes finish first: shutdown(wait=True) in the pool's own thread.
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        self._db.close()
