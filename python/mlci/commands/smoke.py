"""`python -m mlci smoke --url URL --artifact DIR`: the artifact's known input through a server, from outside.

Exit 0 when the server answers the manifest's expected output for that version, 1 when it answers anything
else (the deploy's smoke gate), 2 for bad arguments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlci.commands import config_of, parse, parser
from mlci.errors import GateFailed


def run(argv: list[str]) -> int:
    p = parser("smoke", "Send an artifact's smoke-test input to a server and check the expected output comes back.")
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://10.0.0.5:8000")
    p.add_argument("--artifact", type=Path, required=True, help="the artifact the server should be serving")
    p.add_argument("--version", help="the version to address (default: the artifact's own)")
    p.add_argument("--output", type=Path, help="write the evidence (or the failure) here as JSON")
    args = parse(p, argv)
    config = config_of(args)

    from mlci.deploy.smoke import smoke

    env = config.serving.token_env
    token = os.environ.get(env) if env else None
    try:
        evidence = smoke(args.url, args.artifact, version=args.version, token=token)
    except GateFailed as exc:
        _write(args.output, {"passed": False, "error": str(exc), "url": args.url})
        raise
    _write(args.output, {"passed": True, **evidence})
    print(f"smoke test passed at {evidence['url']}{evidence['path']}: labels {evidence['labels']}, "
          f"max |logit diff| {evidence['max_abs_diff']:.2g} (allowed {evidence['atol']:g})")  # fmt: skip
    return 0


def _write(path: Path | None, data: dict[str, object]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
