"""`mlci compare BASE`: this checkout against a base git revision (trained or reused), as a pull-request comment."""

from __future__ import annotations

from collections.abc import Sequence

from mlci.commands import config_of, parse, parser
from mlci.errors import EXIT_GATE_FAILED, EXIT_OK


def run(argv: Sequence[str]) -> int:
    p = parser("compare", "Compare this checkout with a base git revision; write a markdown pull-request comment.")
    p.add_argument("base", help="the base git revision (a branch, tag or commit; e.g. origin/main)")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.compare import compare

    result = compare(config, args.base, args.overrides)
    d = result.difference
    print(
        f"change {result.head.id} - base {result.base.id}: accuracy {d.accuracy.point:+.4f} "
        f"[{d.accuracy.low:+.4f}, {d.accuracy.high:+.4f}], macro-F1 {d.macro_f1.point:+.4f} "
        f"[{d.macro_f1.low:+.4f}, {d.macro_f1.high:+.4f}]"
    )
    for gate in result.gates:
        print(f"  {gate.status.upper():7} {gate.name:<13} {gate.message}")
    print(f"comment: {result.comment} ({'passed' if result.passed else 'FAILED'})")
    return EXIT_OK if result.passed else EXIT_GATE_FAILED
