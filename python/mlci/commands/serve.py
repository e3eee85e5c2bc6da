"""`python -m mlci serve [--artifact DIR]`: serve a model artifact over the Open Inference Protocol."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from mlci.commands import config_of, parse, parser


def run(argv: list[str]) -> int:
    p = parser("serve", "Serve a model artifact (default: the registry's champion) over KServe v2 REST.")
    p.add_argument("--artifact", type=Path, help="artifact directory (model.safetensors + manifest.json)")
    p.add_argument(
        "--server-version", default="", help="what was installed (shown in /manage/status; the deploy sets it)"
    )
    args = parse(p, argv)
    config = config_of(args)

    from mlci.serve.champion import champion_artifact
    from mlci.serve.runner import serve

    artifact = args.artifact if args.artifact is not None else champion_artifact(config)
    # Swaps, rollbacks and server errors go to stderr; the ready line goes to stdout.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(info: dict[str, Any]) -> None:
        # One JSON line that scripts and tests can wait for; the ports are the ones actually bound.
        print(f"mlci serve ready {json.dumps(info)}", flush=True)

    serve(config, artifact, on_ready=ready, server_version=args.server_version)
    return 0
