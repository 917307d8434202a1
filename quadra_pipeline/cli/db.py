"""`quadra db ...`: the project's SQL database schema (Alembic)."""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, _Parser


def _database_url(args: argparse.Namespace) -> str:
    from ..settings import load_settings

    return args.database_url or load_settings().database_url


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ..store import current, mask_url, upgrade

    url = _database_url(args)
    upgrade(url, args.revision)
    print(f"{mask_url(url)}: at revision {current(url)}")
    return EXIT_OK


def cmd_db_current(args: argparse.Namespace) -> int:
    from ..store import current, head_revision

    url = _database_url(args)
    revision = current(url)
    head = head_revision()
    state = "up to date" if revision == head else f"behind head {head}; run 'quadra db upgrade'"
    print(f"{revision or 'empty (no schema)'} ({state})")
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="the project's SQL database").add_subparsers(
        dest="db_command", metavar="COMMAND", required=True, parser_class=_Parser)
    up = db.add_parser("upgrade", help="apply migrations up to the newest schema (Alembic head)",
                       description="Apply migrations (Alembic) to DATABASE_URL or --database-url.")
    up.add_argument("--revision", default="head", help="target revision (head)")
    up.add_argument("--database-url", help="database URL (default DATABASE_URL or the data home's SQLite file)")
    up.set_defaults(handler=cmd_db_upgrade)
    cur = db.add_parser("current", help="print the database's schema revision",
                        description="Print the schema revision of DATABASE_URL or --database-url.")
    cur.add_argument("--database-url", help="database URL (default DATABASE_URL or the data home's SQLite file)")
    cur.set_defaults(handler=cmd_db_current)
