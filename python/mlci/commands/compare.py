"""`mlci compare <base rev>`: train or reuse the checkout and the base revision (in a temporary git worktree),
then write reports/<run>/compare.md, a pull-request comment: metrics with paired deltas and intervals, the gate
verdicts, plots. Exit code of head's gates (0 passed, 1 failed), 2 for a bad revision or config."""

from __future__ import annotations

from collections.abc import Sequence

from mlci.commands import config_of, parse, parser


def run(argv: Sequence[str]) -> int:
    p = parser("compare", "Compare the checkout with a base git revision; writes a markdown pull-request comment.")
    p.add_argument("base", help="the base git revision (a branch, tag or sha: anything git rev-parse accepts)")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.commands.train import printing_hooks, shown
    from mlci.compare import compare

    result = compare(config, args.base, hooks=printing_hooks())
    how = "trained in a temporary worktree" if result.base_trained else "reused"
    print(f"base: run {result.base.id} of {args.base} ({result.base_commit[:12]}), {how}")
    print(f"pull-request comment: {shown(result.markdown)}")
    return result.exit_code
