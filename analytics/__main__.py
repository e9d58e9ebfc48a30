"""Command line: `python -m analytics sample | report | dashboard | sql`."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from analytics.server import KERNEL_IDLE_S


def command_line() -> argparse.ArgumentParser:
    """The parser of `python -m analytics`: its commands and their options."""
    parser = argparse.ArgumentParser(prog="python -m analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="write realistic sample journeys with the bot's event writer")
    sample.add_argument("--customers", type=int, default=1000, help="customers reached (default: 1000)")
    sample.add_argument(
        "--days", type=int, default=28, help="days before now over which customers first came (default: 28)"
    )
    sample.add_argument(
        "--out", type=Path, default=Path("data/sample"), help="the store to write to (default: data/sample)"
    )
    sample.add_argument(
        "--seed", type=int, default=7, help="the same seed writes the same journeys (default: 7)"
    )

    report = commands.add_parser("report", help="one self-contained HTML report, and/or CSV of every table")
    report.add_argument(
        "--data", default=None, help="a directory or s3://bucket/prefix (default: PROMOBOT_DATA or data)"
    )
    report.add_argument("--out", type=Path, help="the HTML file to write")
    report.add_argument("--csv", type=Path, metavar="DIR", help="write every metric table as CSV here")
    report.add_argument("--campaign", help="one campaign's id (default: every campaign)")
    report.add_argument("--start", type=date.fromisoformat, help="first day, YYYY-MM-DD (UTC)")
    report.add_argument("--end", type=date.fromisoformat, help="last day, YYYY-MM-DD (UTC)")

    dashboard = commands.add_parser("dashboard", help="serve the Voilà dashboard")
    dashboard.add_argument("--data", default=None, help="store to show (default: PROMOBOT_DATA or data)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    dashboard.add_argument("--port", type=int, default=8866, help="the port to listen on (default: 8866)")
    dashboard.add_argument(
        "--kernel-idle-s",
        type=int,
        default=KERNEL_IDLE_S,
        help="stop a closed page's kernel after it has been idle this many seconds"
        f" (default: {KERNEL_IDLE_S}); an open page keeps its kernel",
    )

    statements = commands.add_parser(
        "sql", help="print the metrics of one question as Athena or Trino SQL (docs/scale.md)"
    )
    statements.add_argument(
        "--dialect", choices=("athena", "trino"), default="athena", help="the SQL engine (default: athena)"
    )
    statements.add_argument("--campaign", help="one campaign's id (default: every campaign)")
    statements.add_argument("--start", type=date.fromisoformat, help="first day, YYYY-MM-DD (in --tz)")
    statements.add_argument("--end", type=date.fromisoformat, help="last day, YYYY-MM-DD (in --tz)")
    statements.add_argument("--tz", default="UTC", help="an IANA time zone (default: UTC)")
    statements.add_argument("--window-days", type=float, default=7.0, help="conversion window (default: 7)")

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = command_line()
    args = parser.parse_args(argv)
    if args.command == "sample":
        from analytics.sample import write_sample

        if args.customers < 1 or args.days < 1:
            parser.error("--customers and --days must be at least 1")
        count = write_sample(args.out, args.customers, args.days, seed=args.seed)
        print(f"wrote {count:,} events of {args.customers:,} customers to {args.out}/events")
        return 0
    if args.command == "report":
        import analytics
        from analytics.query import store_source
        from analytics.report import metric_tables, render_report, write_csv

        if args.out is None and args.csv is None:
            parser.error("give --out FILE.html, --csv DIR, or both")
        data = store_source(args.data)
        events = analytics.open(data)
        if not events.campaigns().num_rows:
            print(f"promobot report: no events in {data}: every figure is 0", file=sys.stderr)
        filters = {"campaign": args.campaign, "start": args.start, "end": args.end}
        if args.out:
            args.out.write_text(render_report(events, **filters), encoding="utf-8")
            print(f"wrote {args.out}")
        if args.csv:
            for path in write_csv(metric_tables(events, **filters), args.csv):
                print(f"wrote {path}")
        return 0
    if args.command == "sql":
        from datetime import timedelta

        from analytics.dialects import statements as athena_statements
        from analytics.filters import AnalyticsError, Filters

        try:
            question = Filters(
                campaign=args.campaign,
                start=args.start,
                end=args.end,
                window=timedelta(days=args.window_days),
                tz=args.tz,
            )
        except AnalyticsError as error:
            parser.error(str(error))
        for name, text in athena_statements(question, args.dialect).items():
            print(f"-- {name}\n{text};\n")
        return 0
    if args.command == "dashboard":
        from analytics.server import serve

        if args.kernel_idle_s < 1:
            parser.error("--kernel-idle-s must be at least 1")
        return serve(data=args.data, host=args.host, port=args.port, kernel_idle_s=args.kernel_idle_s)
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
