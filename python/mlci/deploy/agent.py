"""The host side of a deploy: run on a serving host with the server's own Python (`python -m mlci.deploy.agent`).

It talks to the server's management API on the host's loopback only and keeps `artifacts/current` pointing
at what the server serves, so a restart (a crash, a reboot, a server upgrade) comes back on the same model.
Standard library only; it prints one JSON object (Ansible reads it) and exits 0, or 1 with {"error": ...}.

    swap    --root R --sha S   serve artifacts/S (hot swap through /manage/load); "running": false when no
                               server answers (the caller starts one on artifacts/current, which now is S)
    restore --root R --sha S   serve S again: nothing if it already serves S, /manage/rollback if S is the
                               previous model still loaded, else /manage/load of artifacts/S
    prune   --root R --keep N  remove delivered artifacts but the N newest, never one the server has loaded
                               (current or previous) nor the one artifacts/current points at
    status                     the server's /manage/status, or {"running": false}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_S = 120.0  # a load verifies, loads, traces, warms and smoke-tests the model before it answers


class AgentError(Exception):
    pass


def _call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The management API's JSON answer; None when nothing listens (no server running)."""
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("MLCI_MANAGEMENT_TOKEN", "")  # serving.management_token_env's default name
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:2000].decode(errors="replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise AgentError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            return None
        raise AgentError(f"{method} {path}: {reason}") from None


def _sha(model: dict[str, Any] | None) -> str | None:
    return None if model is None else model.get("sha256")


def point_current(root: Path, sha: str) -> None:
    """artifacts/current -> S, replaced atomically (a reader sees the old or the new link, never none)."""
    artifacts = root / "artifacts"
    tmp = artifacts / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(sha)
    os.replace(tmp, artifacts / "current")


def current_link(root: Path) -> str | None:
    link = root / "artifacts" / "current"
    return os.readlink(link) if link.is_symlink() else None


def swap(root: Path, sha: str, port: int) -> dict[str, Any]:
    target = root / "artifacts" / sha
    if not (target / "manifest.json").is_file():
        raise AgentError(f"{target}: no artifact delivered here")
    before = current_link(root)
    status = _call(port, "GET", "/manage/status")
    if status is None:
        point_current(root, sha)
        return {"running": False, "changed": before != sha, "previous_sha256": before, "status": None}
    served = _sha(status.get("current"))
    if served == sha:
        point_current(root, sha)
        return {"running": True, "changed": False, "previous_sha256": _sha(status.get("previous")), "status": status}
    after = _call(port, "POST", "/manage/load", {"artifact": str(target), "sha256": sha})
    point_current(root, sha)
    return {"running": True, "changed": True, "previous_sha256": served, "status": after}


def restore(root: Path, sha: str, port: int) -> dict[str, Any]:
    status = _call(port, "GET", "/manage/status")
    if status is None:  # nothing running: the link decides what a (re)start serves
        if (root / "artifacts" / sha).is_dir():
            point_current(root, sha)
        return {"running": False, "changed": True, "status": None}
    if _sha(status.get("current")) == sha:
        changed = False
    elif _sha(status.get("previous")) == sha:
        status, changed = _call(port, "POST", "/manage/rollback"), True
    else:
        target = root / "artifacts" / sha
        status, changed = _call(port, "POST", "/manage/load", {"artifact": str(target), "sha256": sha}), True
    point_current(root, sha)
    return {"running": True, "changed": changed, "status": status}


def prune(root: Path, keep: int, port: int) -> dict[str, Any]:
    # Newest first by the folder's mtime: when it was first delivered (a second delivery copies nothing).
    folders = sorted(
        (f for f in (root / "artifacts").iterdir() if f.is_dir() and not f.is_symlink() and not f.name.startswith(".")),
        key=lambda f: f.stat().st_mtime,
        reverse=True,
    )
    status = _call(port, "GET", "/manage/status")
    loaded = {current_link(root)}
    if status is not None:
        loaded |= {_sha(status.get("current")), _sha(status.get("previous"))}
    removed = [f.name for i, f in enumerate(folders) if i >= keep and f.name not in loaded]
    for name in removed:
        shutil.rmtree(root / "artifacts" / name)
    return {"changed": bool(removed), "removed": removed, "kept": [f.name for f in folders if f.name not in removed]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlci.deploy.agent")
    p.add_argument("action", choices=["swap", "restore", "prune", "status"])
    p.add_argument("--root", type=Path, help="the model server's folder (artifacts/ under it)")
    p.add_argument("--sha", help="the artifact's weights sha256")
    p.add_argument("--management-port", type=int, default=8001)
    p.add_argument("--keep", type=int, default=5, help="prune: how many of the newest artifacts to keep")
    args = p.parse_args(argv)
    try:
        if args.action == "status":
            status = _call(args.management_port, "GET", "/manage/status")
            out: dict[str, Any] = {"running": status is not None, "status": status}
        elif args.action == "prune":
            if args.root is None or args.keep < 1:
                raise AgentError("prune needs --root and --keep of at least 1")
            out = prune(args.root, args.keep, args.management_port)
        elif args.root is None or not args.sha:
            raise AgentError(f"{args.action} needs --root and --sha")
        elif args.action == "swap":
            out = swap(args.root, args.sha, args.management_port)
        else:
            out = restore(args.root, args.sha, args.management_port)
    except AgentError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
