"""`mlci periodic`: what cron runs on runners (periodic.py): one at a time, a no-op when nothing changed, else
train -> evaluate -> gates -> report (-> deploy when `periodic.deploy`), old reports pruned, webhook told.

Exit 0: passed, up to date, or another periodic run holds the lock ("locked: ..."); 1: a gate or the deploy
failed; 2: usage, config or data error. A webhook failure is logged and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlci.commands import config_of, parse, parser


def run(argv: Sequence[str]) -> int:
    p = parser(
        "periodic",
        "Retrain when code, data or params changed (else a no-op), gate, report, deploy when [periodic] deploy = "
        "true; one at a time.",
    )
    args = parse(p, argv)
    config = config_of(args)

    from mlci import periodic
    from mlci.commands.train import printing_hooks

    result = periodic.run(config, overrides=args.overrides, hooks=printing_hooks(), progress=print)
    if result.locked_by is not None:
        print(f"locked: {result.locked_by}")
        return 0
    if result.deployed is not None:
        print(f"deploy: {result.deployed}")
    elif result.deploy_error is not None:
        print(f"deploy FAILED: {result.deploy_error}")
    elif result.outcome is not None and not result.outcome.up_to_date and config.periodic.deploy:
        print("deploy: skipped (the run failed its gates)")
    if result.pruned:
        print(f"reports pruned: {', '.join(result.pruned)} (periodic.keep_reports = {config.periodic.keep_reports})")
    if result.webhook is not None:
        print(f"webhook: {result.webhook}")
    return result.exit_code
