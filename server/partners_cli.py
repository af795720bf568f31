"""``roundtable partners add|list|remove``: the partner directory from the command line.

It opens the same state store as ``roundtable serve`` with the same settings (the state
directory's SQLite file, or ``ROUNDTABLE_REDIS_URL``), so an entry added here is offered
in the dial-in form at once, without a restart, on every node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.config import Config
from signaling.bodies import DEFAULT_RIGHTS, MAX_INVITE_MINUTES, ORGANISATION_TYPES, RIGHTS

DESCRIPTION = textwrap.dedent(
    """\
    Keep the partner organisations a caseworker can dial in with two clicks: in the
    dial-in form ("Partner hinzuschalten") they are offered as the caseworker types, and
    picking one fills in the organisation, its type, the contact person, the e-mail
    address the invite goes to, the rights and how long the link is valid.

    Uses the same store as `roundtable serve` with the same settings: the SQLite file in
    the state directory (ROUNDTABLE_STATE_DIR or --state-dir), or the cluster's Redis
    when ROUNDTABLE_REDIS_URL is set. A running server sees changes at once. The same
    directory is kept over HTTP at /api/partners (docs/protocol.md).

    examples:
      roundtable partners add "DRV Bund" --type pension_insurance \\
          --contact "Frau Yilmaz" --email beratung@drv.example --rights audio,video,chat
      roundtable partners list
      roundtable partners list --json
      roundtable partners remove "DRV Bund"
    """
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "partners",
        help="add, list or remove partner organisations offered in the dial-in form",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="state directory of the server (default: ROUNDTABLE_STATE_DIR or "
        "~/.config/roundtable); ignored with ROUNDTABLE_REDIS_URL",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="add an organisation",
        description="Add a partner organisation to the directory. Names are unique "
        "(ignoring case and spaces).",
    )
    add.add_argument("name", help="the organisation's name as caseworkers know it")
    add.add_argument(
        "--type",
        choices=ORGANISATION_TYPES,
        default="other",
        help="kind of organisation (default: other)",
    )
    add.add_argument("--contact", help="the person usually invited (the invite's name)")
    add.add_argument("--email", help="where the invite mail goes (needs ROUNDTABLE_SMTP_URL)")
    add.add_argument(
        "--rights",
        help=f"comma list from {','.join(RIGHTS)} (default: {','.join(DEFAULT_RIGHTS)}; "
        "'' for none)",
    )
    add.add_argument(
        "--minutes",
        type=int,
        help=f"validity of the invite in minutes, 1-{MAX_INVITE_MINUTES} "
        "(default: ROUNDTABLE_INVITE_MINUTES)",
    )
    listing = actions.add_parser("list", help="show the directory as a table")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    remove = actions.add_parser("remove", help="remove an organisation by id or by name")
    remove.add_argument("partner", help="its id (pt_…) or its name")


def run(args: argparse.Namespace) -> int:
    from server.app import default_store

    config = Config.from_env(state_dir=args.state_dir)
    action: dict[str, Callable[[Any, argparse.Namespace, Config], Awaitable[int]]] = {
        "add": _add,
        "list": _list,
        "remove": _remove,
    }

    async def main() -> int:
        store = default_store(config)
        try:
            ping = getattr(store, "ping", None)
            if ping is not None:
                await ping()
            # Which store, on stderr (stdout stays for scripts): a mistyped state
            # directory would otherwise quietly start a directory of its own.
            where = "Redis (ROUNDTABLE_REDIS_URL)" if config.redis_url else store.path
            print(f"roundtable: partner directory in {where}", file=sys.stderr)
            return await action[args.action](store, args, config)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except sqlite3.Error as exc:
        # E.g. the state directory belongs to the service's user: say so, no traceback.
        print(
            f"roundtable: cannot use the state file in {config.state_dir}: {exc}", file=sys.stderr
        )
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"roundtable: the state store is unreachable: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # redis-py's errors do not derive from OSError; say what failed, not a traceback.
        if type(exc).__module__.startswith("redis"):
            print(f"roundtable: Redis is unreachable: {exc}", file=sys.stderr)
            return 1
        raise


async def _add(store: Any, args: argparse.Namespace, config: Config) -> int:
    from signaling.bodies import PartnerBody, parse_body
    from signaling.errors import RoundtableError
    from signaling.partners import check_saved, partner_from_body

    body: dict[str, Any] = {"name": args.name, "type": args.type}
    if args.contact is not None:
        body["contact"] = args.contact
    if args.email is not None:
        body["email"] = args.email
    if args.rights is not None:
        body["rights"] = [r.strip() for r in args.rights.split(",") if r.strip()]
    if args.minutes is not None:
        body["valid_minutes"] = args.minutes
    try:
        partner = partner_from_body(
            parse_body(PartnerBody, body), default_minutes=config.invite_minutes
        )
        check_saved(await store.save_partner(partner, new=True), partner)
    except RoundtableError as err:
        print(f"roundtable: {err.message}", file=sys.stderr)
        return 2 if err.code == "bad_request" else 1
    print(partner.id)
    return 0


COLUMNS = (
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("CONTACT", "contact"),
    ("E-MAIL", "email"),
    ("RIGHTS", "rights"),
    ("MINUTES", "valid_minutes"),
)


def table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        value = row[key]
        if isinstance(value, list):
            return ",".join(value) or "-"
        return "-" if value is None else str(value)

    lines = [[title for title, _ in COLUMNS]]
    lines += [[cell(row, key) for _, key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


async def _list(store: Any, args: argparse.Namespace, config: Config) -> int:
    rows = [p.to_dict() for p in await store.list_partners()]
    if args.json:
        print(json.dumps({"partners": rows}, ensure_ascii=False, indent=2))
    elif rows:
        print(table(rows))
    else:
        print("no partners yet: roundtable partners add NAME (see --help)", file=sys.stderr)
    return 0


async def _remove(store: Any, args: argparse.Namespace, config: Config) -> int:
    from signaling.store import partner_key

    wanted = args.partner
    if await store.remove_partner(wanted):
        print(f"removed {wanted}")
        return 0
    matches = [p for p in await store.list_partners() if p.key == partner_key(wanted)]
    if matches and await store.remove_partner(matches[0].id):
        print(f"removed {matches[0].id}")
        return 0
    print(f"roundtable: no partner with the id or name {wanted!r}", file=sys.stderr)
    return 1
