"""The command line: `python -m bot <command>`.

Commands: serve, migrate, codes generate, redeem, compact, links, doctor, audience, broadcast, forget,
run-local.
"""

from __future__ import annotations

import argparse
import sys


def command_line() -> argparse.ArgumentParser:
    """The parser of `python -m bot`: its commands and their options."""
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the webhook service under uvicorn (needs PROMOBOT_APP_SECRET, PROMOBOT_VERIFY_TOKEN and "
        "PROMOBOT_PAGE_TOKEN)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1; 0.0.0.0 for all)"
    )
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (default: 8000)")

    commands.add_parser(
        "migrate",
        help="bring the store's schema up to date and exit (serve does it too; for a release phase that runs "
        "before new instances start)",
    )

    codes = commands.add_parser("codes", help="single-use coupon codes")
    codes_commands = codes.add_subparsers(dest="codes_command", required=True)
    generate = codes_commands.add_parser(
        "generate",
        help="write new random codes to a codes file (letters and digits a cashier cannot misread)",
    )
    generate.add_argument("--count", type=int, required=True, help="how many codes")
    generate.add_argument("--prefix", default="", help="text every code starts with, e.g. SPR-")
    generate.add_argument("--length", type=int, default=8, help="random characters per code (default 8)")
    generate.add_argument("--out", required=True, help="the codes file, e.g. data/spring-codes.csv")
    generate.add_argument("--append", action="store_true", help="add the codes to an existing file's end")

    redeem = commands.add_parser(
        "redeem", help="mark single-use codes used from a till's export (a CSV file with a `code` column)"
    )
    redeem.add_argument("--csv", required=True, help="columns `code` and, optionally, `redeemed_at`")
    redeem.add_argument("--campaign", help="the campaign whose codes they are (default: the campaign file's)")
    redeem.add_argument(
        "--tz", default="UTC", help="the zone of times written without one, as Europe/Paris (default: UTC)"
    )

    compact = commands.add_parser(
        "compact", help="merge the event files of each day over for a whole day into one"
    )
    compact.add_argument("--data", help="store to compact (default: PROMOBOT_DATA)")
    compact.add_argument(
        "--day", help="only this UTC day, YYYY-MM-DD (default: every day over for a whole day)"
    )
    compact.add_argument(
        "--grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="keep replaced files this long for readers already listing them (default 600)",
    )

    links = commands.add_parser(
        "links", help="the m.me link of each placement of a campaign, with its QR code as PNG and SVG"
    )
    links.add_argument("--campaign", required=True, help="the campaign's id, the ref's first part")
    links.add_argument("--placements", required=True, help="where it is shown, e.g. till,flyer,instagram")
    links.add_argument("--variant", help="a variant the links force, the ref's last part")
    links.add_argument("--page", help="the page's username (default: asked from the Graph API)")
    links.add_argument(
        "--out",
        help="the folder for the QR files and links.csv "
        "(default: PROMOBOT_DATA/links/<campaign>[.<variant>], which the dashboard lists)",
    )

    doctor = commands.add_parser(
        "doctor",
        help="check the page token, the webhook subscription, the Graph API version's end of life and "
        "whether the bot keeps up; exit status 1 when a check fails",
    )
    doctor.add_argument(
        "--fix",
        action="store_true",
        help="subscribe the app to the page's webhook fields it lacks, and add the persistent menu's "
        "'Stop promotions' item",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as one JSON object")

    audience = commands.add_parser(
        "audience", help="how many customers a campaign may be sent now, and why not the others"
    )
    audience.add_argument("--campaign", required=True, help="the campaign's id")
    audience.add_argument("--json", action="store_true", help="print the counts as one JSON object")

    broadcast = commands.add_parser(
        "broadcast",
        help="send the campaign's welcome to every customer Messenger lets the page message now (running it "
        "again resumes a stopped broadcast)",
    )
    broadcast.add_argument("--campaign", required=True, help="the campaign's id (the campaign file's)")
    broadcast.add_argument(
        "--rate",
        type=int,
        metavar="PER_MINUTE",
        help="welcomes a minute (default 60, or the resumed broadcast's)",
    )
    broadcast.add_argument(
        "--dry-run", action="store_true", help="show the audience; send and record nothing"
    )
    forget = commands.add_parser(
        "forget",
        help="delete everything promobot keeps of one customer: the transactional store's rows and their "
        "rows in the event files (rewritten at once)",
    )
    forget.add_argument("psid", help="the customer's page-scoped id, as the events' customer_id")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    commands.add_parser(
        "run-local",
        help="seed sample data, start the bot with its Messenger simulator and the dashboard on 127.0.0.1, "
        "no Facebook app needed (make run)",
    )

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = command_line()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from bot.config import Mode
        from bot.server import serve as run_server

        run_server(Mode.SERVER, host=args.host, port=args.port)  # waits for an unreachable store first
        return 0
    if args.command == "migrate":
        return migrate()
    if args.command == "codes":
        from pathlib import Path

        from bot.codes import generate_command

        return generate_command(args.count, args.prefix, args.length, Path(args.out), args.append)
    if args.command == "redeem":
        from pathlib import Path

        from bot.till import redeem_command

        return redeem_command(Path(args.csv), args.campaign, args.tz)
    if args.command == "compact":
        from bot.compaction import compact_command

        return compact_command(data=args.data, day=args.day, grace_s=args.grace)
    if args.command == "links":
        from pathlib import Path

        from bot.links import links_command

        out = Path(args.out) if args.out else None
        return links_command(args.campaign, args.placements, out, variant=args.variant, page=args.page)
    if args.command == "doctor":
        from bot.doctor import doctor_command

        return doctor_command(fix=args.fix, as_json=args.json)
    if args.command == "audience":
        from bot.broadcast_command import audience_command

        return audience_command(args.campaign, args.json)
    if args.command == "broadcast":
        from bot.broadcast_command import broadcast_command

        return broadcast_command(args.campaign, args.rate, args.dry_run)
    if args.command == "forget":
        from bot.privacy import forget_command

        return forget_command(args.psid, yes=args.yes)
    if args.command == "run-local":
        from bot.local import run_local

        return run_local()
    parser.error(f"unknown command {args.command}")


def migrate() -> int:
    """Open the store named by the environment (PROMOBOT_DATABASE_URL, DATABASE_URL, or the SQLite file in
    PROMOBOT_DATA), applying the schema steps it lacks; it needs none of the platform's secrets. A PostgreSQL
    server that does not answer is waited for as `serve` waits: a release phase runs this unattended."""

    from bot.config import ConfigError
    from bot.database import DatabaseError
    from bot.migrations import MigrationError
    from bot.startup import command_settings, configure_logging, open_database

    try:
        settings = command_settings()
        configure_logging(settings.log_level)
        open_database(settings, wait_s=settings.database_wait_s).close()
    except (ConfigError, DatabaseError, MigrationError) as exc:
        print(f"promobot migrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # Ctrl-C while waiting for the store
    print("promobot migrate: the schema is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
