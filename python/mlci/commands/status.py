"""`python -m mlci status [--env NAME]`: which model version each serving host serves, and is it the champion.

Exit 0 when every serving host answers and serves the registry's champion; 1 when one is unreachable, serves
no model or serves other weights (or there is no champion to compare with); 2 for usage or config errors.
Imports neither torch nor numpy: it answers in well under a second.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlci.commands import config_of, parse, parser
from mlci.config import Config
from mlci.deploy.rollout import management_token, target
from mlci.deploy.status import HostStatus, fetch
from mlci.errors import EXIT_OK, GateFailed, UsageError
from mlci.registry import exists as registry_exists
from mlci.registry import location as registry_location
from mlci.registry import open_registry


def run(argv: list[str]) -> int:
    p = parser("status", "The model each serving host serves (through SSH), compared with the registry's champion.")
    p.add_argument("--env", help="inventory folder inventories/NAME (default: deploy.inventory)")
    p.add_argument("--group", default="serving", help="inventory group to ask (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per connection step (default: %(default)s)")
    args = parse(p, argv)
    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout}: must be > 0")
    config = config_of(args)
    # Through rollout.target, as deploy does: a local-runtime server listens on mlci.toml's serving ports.
    where = target(config, args.env, args.group)
    inventory, targets = where.inventory, where.hosts
    token_env = config.serving.management_token_env
    started = time.perf_counter()
    results = fetch(targets, timeout=args.timeout, token=management_token(config))
    took = time.perf_counter() - started
    champion_sha, champion_about = _champion(config)

    table = Table("host", "version", "run", "sha256", "previous", "verdict")
    failed: list[str] = []
    for result in results:
        style, verdict, detail = _verdict(result, champion_sha)
        if style != "green":
            failed.append(f"{result.host} ({verdict})")
        current = (result.status or {}).get("current") or {}
        previous = (result.status or {}).get("previous") or {}
        table.add_row(
            escape(result.host),
            escape(str(current.get("version", "-"))),
            escape(str(current.get("run_id", "-"))),
            escape(str(current.get("sha256", "-"))[:12]),
            escape(str(previous.get("version", "-"))),
            f"[{style}]{escape(verdict)}[/]" + (f": {escape(detail)}" if detail else ""),
        )
    console = Console()
    if not console.is_terminal:  # logs and CI: long errors on one line each, not folded at 80 columns
        console = Console(width=200)
    console.print(table)
    console.print(f"[dim]{len(results)} host(s) of {escape(str(inventory))} asked in {took:.2f} s[/]")
    console.print(f"[dim]champion: {escape(champion_about)}[/]")
    if any(r.error and r.error.startswith("HTTP 401") for r in results):
        console.print(f"[dim]the management API wants its bearer token in ${escape(token_env)}[/]")
    if failed:
        raise GateFailed(f"{len(failed)} of {len(results)} host(s) do not serve the champion: {', '.join(failed)}")
    return EXIT_OK


def _champion(config: Config) -> tuple[str | None, str]:
    """The champion's weights sha256 (None when there is none) and a few words about it."""
    path = registry_location(config)
    if not registry_exists(config):  # opening a Registry creates one: a status check must not
        return None, f"none (no registry at {path})"
    with open_registry(config) as registry:
        run = registry.champion()
    if run is None:
        return None, f"none (the registry {path} has none)"
    artifact = run.artifact("model")
    if artifact is None:
        return None, f"none (champion {run.id} has no model artifact)"
    return artifact.sha256, f"{run.id} {artifact.sha256[:12]}"


def _verdict(result: HostStatus, champion_sha: str | None) -> tuple[str, str, str]:
    """(rich style, verdict, detail) for one host; the style is green only when it serves the champion."""
    if not result.reachable or result.status is None:
        return "red", "unreachable", result.error or ""
    current = result.status.get("current")
    if not current:
        return "red", "no model", str(result.status.get("last_error") or "")
    if champion_sha is None:
        return "yellow", "no champion", ""
    if current.get("sha256") == champion_sha:
        return "green", "champion", ""
    return "red", "not the champion", ""
