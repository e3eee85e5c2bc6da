"""`python -m mlci deploy [--env NAME] [--run REF]`: the gated rolling deploy of a run to the serving hosts.

Exit 0: deployed (or already serving: a no-op), 1: refused or stopped by a gate (every host back on its
previous model; the ledger says why), 2: usage, config or inventory error.
"""

from __future__ import annotations

from mlci.commands import config_of, parse, parser


def run(argv: list[str]) -> int:
    p = parser("deploy", "Gated rolling deploy of the newest run that passed its gates to the serving hosts.")
    p.add_argument("--env", help="environment: inventories/NAME (default: deploy.inventory in mlci.toml)")
    p.add_argument("--run", help="the run to deploy (id, prefix, latest, champion); default: newest that passed")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.deploy.rollout import deploy

    outcome = deploy(config, env=args.env, run_ref=args.run, overrides=args.overrides, progress=print)
    if outcome.outcome != "up to date":
        smoke = outcome.evidence.get("smoke", {})
        loadtest = outcome.evidence.get("loadtest") or {}
        figures = loadtest.get("figures") or {}
        print(f"{outcome.outcome}: run {outcome.run.id} serves on {len(outcome.hosts)} host(s) of {outcome.env} "
              f"({len(smoke)} smoke test(s) passed) in {outcome.seconds:.1f} s")  # fmt: skip
        if figures:
            base = loadtest.get("baseline") or {}
            versus = f"; previous model p95 {base['p95_ms']:g} ms in the same window" if base.get("p95_ms") else ""
            print(f"canary load test: {figures.get('requests')} requests, {figures.get('failures')} failed, "
                  f"p95 {figures.get('p95_ms')} ms{versus}")  # fmt: skip
    return 0
