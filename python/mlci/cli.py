"""`python -m mlci <command> ...`: the only place that prints errors and chooses exit codes.

Commands are imported lazily so that a no-op (`mlci train` with nothing changed) never pays for torch.
Each command module exposes `run(argv: list[str]) -> int`.
"""

from __future__ import annotations

import importlib
import sys

from mlci.errors import EXIT_USAGE, MlciError

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mlci.commands.data", "check the data files against the schema"),
    "train": ("mlci.commands.train", "data check, train (or reuse), evaluate, report; exit code of the gates"),
    "periodic": ("mlci.commands.periodic", "what cron runs: train when something changed, gate, report, deploy"),
    "compare": ("mlci.commands.compare", "the checkout vs a base git revision: a pull-request comment (markdown)"),
    "evaluate": ("mlci.commands.evaluate", "evaluate a run against the champion and apply the gates"),
    "report": ("mlci.commands.report", "write reports/<run>/ (markdown, html, plots, gates.xml)"),
    "serve": ("mlci.commands.serve", "serve a model artifact over the Open Inference Protocol"),
    "loadtest": ("mlci.commands.loadtest", "Locust load test against a URL with an SLO gate"),
    "smoke": ("mlci.commands.smoke", "send an artifact's known input to a server and check its known output"),
    "deploy": ("mlci.commands.deploy", "gated rolling deploy of a run to an environment's serving hosts"),
    "rollback": ("mlci.commands.rollback", "every serving host back to the previous champion"),
    "status": ("mlci.commands.status", "which model each serving host serves (through SSH) vs the champion"),
    "runs": ("mlci.commands.runs", "the registry at a glance, newest first; `runs show REF` for one run"),
    "lease": ("mlci.commands.lease", "run a command on k free GPUs: mlci lease --gpus K -- COMMAND ..."),
    "sandbox": ("mlci.commands.sandbox", "up|down|status: local SSH test hosts on the Docker engine"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m mlci <command> [options] [section.key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"Error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.run(rest))
    except MlciError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
