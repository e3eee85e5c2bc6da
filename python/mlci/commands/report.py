"""`mlci report [--run REF] [--compare REF]`: write reports/<run>/ (markdown, html, plots, gates.xml)."""

from __future__ import annotations

from collections.abc import Sequence

from mlci.commands import config_of, parse, parser
from mlci.errors import EXIT_OK


def run(argv: Sequence[str]) -> int:
    p = parser("report", "Write reports/<run>/: report.md, report.html, PNG plots and gates.xml (JUnit).")
    p.add_argument("--run", default="latest", help="run id, id prefix, 'latest' or 'champion' (default: %(default)s)")
    p.add_argument(
        "--compare",
        metavar="REF",
        help="also compare with this run (id or prefix) or git revision (the newest run of that commit)",
    )
    args = parse(p, argv)
    config = config_of(args)

    from mlci.commands.evaluate import open_registry
    from mlci.report import write_report

    with open_registry(config) as registry:
        target = registry.run(args.run)
        folder = write_report(config, registry, target, compare=args.compare)
    print(f"report for run {target.id}: {folder / 'report.html'} (also report.md, gates.xml)")
    return EXIT_OK
