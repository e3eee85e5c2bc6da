"""`python -m mlci rollback [--env NAME]`: every serving host back on the previous champion, in one command.

The previous champion becomes the champion again and the ledger records it (`rolled back`). Exit 0 done,
1 a host could not be returned, 2 nothing to roll back to or a usage error.
"""

from __future__ import annotations

from mlci.commands import config_of, parse, parser


def run(argv: list[str]) -> int:
    p = parser("rollback", "Return every serving host to the previous champion and make it the champion again.")
    p.add_argument("--env", help="environment: inventories/NAME (default: deploy.inventory in mlci.toml)")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.deploy.rollout import rollback

    outcome = rollback(config, env=args.env, overrides=args.overrides, progress=print)
    print(f"rolled back: run {outcome.run.id} serves on {len(outcome.hosts)} host(s) of {outcome.env} "
          f"and is the champion again ({outcome.seconds:.1f} s)")  # fmt: skip
    return 0
