"""`mlci deploy` and `mlci rollback`: plan, run the playbook, record the outcome in the ledger.

The plays do the work on the hosts (playbooks/deploy.yml, playbooks/rollback.yml) and leave their evidence in
a folder on the controller (.mlci/deploys/<attempt>/: each host's swap, smoke test and failure, the canary's
load-test summary); this module decides what to ship, skips a deploy that has nothing to do, returns the
hosts a failed rollout had already updated, and writes every attempt to the ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlci import dashboard
from mlci.config import Config
from mlci.deploy import candidate
from mlci.deploy.inventory import InventoryHost, hosts, inventory_path
from mlci.deploy.status import HostStatus, fetch
from mlci.errors import GateFailed, MlciError, UsageError
from mlci.registry import Registry, Run, open_registry

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where a deploy goes: the environment's name, its inventory and serving hosts."""

    env: str
    inventory: Path
    hosts: list[InventoryHost]

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


@dataclass
class Outcome:
    run: Run
    env: str
    hosts: list[str]
    outcome: str  # a ledger outcome, or "up to date"
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def target(config: Config, env: str | None, group: str = "serving") -> Target:
    inventory = inventory_path(config, env)
    found = hosts(inventory, group)
    # A local-runtime server is this project's own `mlci serve`: its ports are mlci.toml's [serving] ones.
    found = [
        dataclasses.replace(h, management_port=config.serving.management_port) if _runtime(h) == "local" else h
        for h in found
    ]
    return Target(env or inventory.name, inventory, found)


def management_token(config: Config) -> str | None:
    """The management API's bearer token, from the variable serving.management_token_env names (None: unset)."""
    name = config.serving.management_token_env
    return (os.environ.get(name) or None) if name else None


def _runtime(host: InventoryHost) -> str:
    default = "local" if host.hostvars.get("mlci_manage_system", True) is False else "systemd"
    return str(host.hostvars.get("model_server_runtime", default))


def _local_ports(config: Config, where: Target) -> dict[str, Any]:
    """Extra variables that give local-runtime hosts mlci.toml's serving ports (none for other runtimes)."""
    if any(_runtime(h) != "local" for h in where.hosts):
        return {}
    s = config.serving
    return {"model_server_port": s.port, "model_server_management_port": s.management_port}


def server_version(config: Config, wheelhouse_digest: str) -> str:
    """What a serving host runs besides the model: mlci's code and dependencies, the serving config.

    A change replaces the server (drained, restarted, enabled) before the model rolls out.
    """
    h = hashlib.sha256()
    h.update(wheelhouse_digest.encode() or _local_code_digest().encode())
    h.update(json.dumps(config.to_dict()["serving"], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _local_code_digest() -> str:
    """mlci's own sources and the Python running them: what the local runtime's server is made of."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(sys.executable.encode())
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def deploy(
    config: Config,
    *,
    env: str | None = None,
    run_ref: str | None = None,
    overrides: list[str] | None = None,
    progress: Progress = lambda _m: None,
) -> Outcome:
    started = time.monotonic()
    where = target(config, env)
    with exclusive(config, where.env), dashboard.rewritten(config):  # reports/index.html shows the ledger
        return _deploy(config, where, run_ref, overrides, progress, started)


def _deploy(
    config: Config, where: Target, run_ref: str | None, overrides: list[str] | None, progress: Progress,
    started: float,
) -> Outcome:  # fmt: skip
    with open_registry(config) as registry:
        run = candidate.choose(registry, run_ref)
        why = candidate.refusal(
            registry, run, env=where.env, staging_env=config.deploy.staging_env,
            require_staging=config.deploy.require_staging,
        )  # fmt: skip
        if why is not None:
            registry.record(run.id, evidence={"env": where.env, "reason": why}, hosts=[], outcome=candidate.REFUSED)
            raise GateFailed(f"deploy to {where.env} refused: {why}")
    artifact = run.artifact("model")
    assert artifact is not None  # refusal() checked it
    server = _server_vars(config, where, progress)
    version = server["mlci_deploy_server_version"]

    before = fetch(where.hosts, token=management_token(config))
    if all(_serves(s, artifact.sha256, version) for s in before):
        n = len(before)
        progress(f"up to date: run {run.id} is serving on {n} host{'s' if n != 1 else ''} of {where.env}")
        return Outcome(run, where.env, where.names, "up to date", seconds=time.monotonic() - started)

    evidence_dir = _evidence_dir(config, run, where.env)
    restore = {s.host: _sha(s) for s in before}
    variables = {
        "mlci_deploy_run": run.id,
        "mlci_deploy_sha256": artifact.sha256,
        "mlci_deploy_artifact": str(Path(artifact.path).resolve()),
        "mlci_deploy_config": str(config.path(config.source).resolve()),
        "mlci_deploy_overrides": list(overrides or []),
        "mlci_deploy_evidence": str(evidence_dir),
        **server,
        "mlci_deploy_canary_loadtest": config.deploy.canary_loadtest,
        "mlci_deploy_canary_overrides": canary_overrides(config),
        "mlci_deploy_restore": restore,
        **_local_ports(config, where),
    }
    progress(f"deploying run {run.id} (sha256 {artifact.sha256[:12]}) to {len(where.hosts)} host(s) of {where.env}")
    code = run_playbook(
        config, where.inventory, "deploy.yml", variables, evidence_dir, nice=config.deploy.controller_nice
    )
    evidence = collect(evidence_dir)
    evidence.update(env=where.env, inventory=str(where.inventory), server_version=version, playbook_exit=code)
    evidence["report"] = _report(config, run)
    with open_registry(config) as registry:
        evaluation = registry.latest_evaluation(run.id)
        evidence["gates"] = (evaluation or {}).get("results", {}).get("gates", [])
        if code == 0:
            staging = where.env == config.deploy.staging_env
            outcome = candidate.PASSED_STAGING if staging else candidate.PROMOTED
            if staging:
                registry.record(run.id, evidence=evidence, hosts=where.names, outcome=outcome)
            else:
                registry.promote(run.id, evidence=evidence, hosts=where.names, outcome=outcome)
            return Outcome(run, where.env, where.names, outcome, evidence=evidence, seconds=time.monotonic() - started)

    reason = _failure_reason(evidence, code)
    updated = [h for h, swap in evidence["swaps"].items() if swap.get("changed") and h not in evidence["failed"]]
    returned = _return_hosts(config, where, run, restore, updated, overrides or [], evidence_dir, server, progress)
    evidence.update(reason=reason, returned=returned)
    with open_registry(config) as registry:
        registry.record(run.id, evidence=evidence, hosts=where.names, outcome=candidate.FAILED)
    raise GateFailed(f"deploy of run {run.id} to {where.env} stopped: {reason}; hosts are back on their previous model")


def rollback(
    config: Config, *, env: str | None = None, overrides: list[str] | None = None, progress: Progress = lambda _m: None
) -> Outcome:
    """Every serving host back on the previous champion, which becomes the champion again."""
    started = time.monotonic()
    where = target(config, env)
    with exclusive(config, where.env), dashboard.rewritten(config):  # reports/index.html shows the ledger
        return _rollback(config, where, overrides, progress, started)


def _rollback(
    config: Config, where: Target, overrides: list[str] | None, progress: Progress, started: float
) -> Outcome:
    with open_registry(config) as registry:
        previous = candidate.previous_champion(registry)
        current = registry.champion()
    if previous is None or current is None:
        raise UsageError("nothing to roll back to: the ledger has no champion before the current one")
    artifact = previous.artifact("model")
    if artifact is None or not Path(artifact.path).is_dir():
        raise UsageError(f"run {previous.id}'s artifact is gone from {artifact.path if artifact else 'the registry'}")
    server = _server_vars(config, where, progress)
    evidence_dir = _evidence_dir(config, previous, where.env, kind="rollback")
    progress(f"rolling {where.env} back from run {current.id} to run {previous.id} (sha256 {artifact.sha256[:12]})")
    code = run_playbook(
        config, where.inventory, "rollback.yml",
        {**_rollback_vars(previous, artifact.path, artifact.sha256, config, overrides or [], evidence_dir, server),
         **_local_ports(config, where)},
        evidence_dir, nice=config.deploy.controller_nice,
    )  # fmt: skip
    evidence = collect(evidence_dir)
    evidence.update(env=where.env, from_run=current.id, playbook_exit=code)
    with open_registry(config) as registry:
        if code != 0:
            registry.record(previous.id, evidence=evidence, hosts=where.names, outcome=candidate.FAILED)
            raise GateFailed(f"rollback of {where.env} to run {previous.id} failed (ansible-playbook exit {code})")
        registry.promote(previous.id, evidence=evidence, hosts=where.names, outcome=candidate.ROLLED_BACK)
    return Outcome(previous, where.env, where.names, candidate.ROLLED_BACK, evidence=evidence,
                   seconds=time.monotonic() - started)  # fmt: skip


# --- helpers ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(config: Config, env: str) -> Iterator[None]:
    """One deploy or rollback per environment at a time (a cron job and a person may start one together)."""
    folder = config.path(".mlci/deploys")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{env}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UsageError(
                f"a deploy or rollback of {env} is already running ({holder}); try again when it ends"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _serves(status: HostStatus, sha256: str, version: str) -> bool:
    s = status.status or {}
    return status.reachable and _sha(status) == sha256 and s.get("server_version") == version


def _sha(status: HostStatus) -> str:
    current = (status.status or {}).get("current") or {}
    return str(current.get("sha256") or "")


def _server_vars(config: Config, where: Target, progress: Progress) -> dict[str, str]:
    """What every play needs to know about the server itself: its version and the wheelhouse it comes from."""
    path, digest = _wheelhouse(config, where, progress)
    return {
        "mlci_deploy_server_version": server_version(config, digest),
        "mlci_deploy_wheelhouse": str(path or ""),
        "mlci_deploy_wheelhouse_digest": digest,
    }


def _wheelhouse(config: Config, where: Target, progress: Progress) -> tuple[Path | None, str]:
    """The server's wheelhouse when a host installs it (systemd, docker); the local runtime needs none."""
    runtimes = {_runtime(h) for h in where.hosts}
    if runtimes <= {"local"}:
        return None, ""
    from mlci.deploy.wheelhouse import build

    house = build(config.root, config.path(".mlci/wheelhouse"), progress=progress)
    return house.path, house.digest


def _evidence_dir(config: Config, run: Run, env: str, kind: str = "deploy") -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    folder = config.path(".mlci/deploys") / f"{stamp}-{kind}-{run.id}-{env}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def canary_overrides(config: Config) -> list[str]:
    """The canary load test's settings on top of [loadtest]: deploy.canary_rps spread over the users."""
    rps = config.deploy.canary_rps
    return [f"loadtest.user_rps={rps / config.loadtest.users!r}"] if rps > 0 else []


def run_playbook(
    config: Config, inventory: Path, playbook: str, variables: dict[str, Any], evidence: Path,
    *, limit: list[str] | None = None, nice: int = 0,
) -> int:  # fmt: skip
    """ansible-playbook from the project folder (its ansible.cfg), output to the terminal; its exit code.

    nice > 0 runs it (and everything it starts on this machine) at that nice value."""
    (evidence / "vars.json").write_text(json.dumps(variables, indent=2) + "\n", encoding="utf-8")
    binary = Path(sys.executable).with_name("ansible-playbook")
    command = [str(binary if binary.exists() else "ansible-playbook"), "-i", str(inventory),
               str(config.root / "playbooks" / playbook), "-e", f"@{evidence / 'vars.json'}"]  # fmt: skip
    if limit:
        command += ["--limit", ",".join(limit)]
    if nice > 0 and shutil.which("nice"):
        command = ["nice", "-n", str(nice), *command]
    env = {**os.environ, "ANSIBLE_CONFIG": str(config.root / "ansible.cfg")}
    try:
        return subprocess.run(command, cwd=config.root, env=env, check=False).returncode
    except FileNotFoundError:
        raise MlciError("ansible-playbook is not installed in this environment (pip install ansible)") from None


def collect(evidence: Path) -> dict[str, Any]:
    """What the plays left: per host swap, smoke and failure records; the canary's load-test summary."""
    out: dict[str, Any] = {"swaps": {}, "smoke": {}, "failed": {}, "loadtest": None, "folder": str(evidence)}
    for path in sorted(evidence.glob("*.json")):
        host, _, kind = path.stem.rpartition(".")
        key = {"swap": "swaps", "smoke": "smoke", "failed": "failed"}.get(kind)
        if key:
            out[key][host] = json.loads(path.read_text(encoding="utf-8"))
    summary = evidence / "loadtest" / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text(encoding="utf-8"))
        out["loadtest"] = {k: data.get(k) for k in ("passed", "url", "load", "figures", "baseline", "checks", "failed")}
    return out


def _failure_reason(evidence: dict[str, Any], code: int) -> str:
    reasons = []
    for host, failure in evidence["failed"].items():
        # A command's own report (the host agent's JSON error) is on its stdout.
        said = f"{failure.get('error', '')} {failure.get('stdout', '')}"
        detail = " ".join(said.split())[:600]
        reasons.append(f"{host}: {failure.get('task')}: {detail}")
    loadtest = evidence.get("loadtest") or {}
    if loadtest.get("failed"):
        reasons.append("canary load test: " + "; ".join(loadtest["failed"]))
    return " | ".join(reasons) or f"ansible-playbook exited {code} (a host unreachable or a task failed)"


def _return_hosts(
    config: Config, where: Target, run: Run, restore: dict[str, str], updated: list[str], overrides: list[str],
    evidence_dir: Path, server: dict[str, str], progress: Progress,
) -> dict[str, str]:  # fmt: skip
    """Put the hosts the rollout had already updated back on what each served before (rollback.yml)."""
    returned: dict[str, str] = {}
    with open_registry(config) as registry:
        by_sha: dict[str, list[str]] = {}
        for host in updated:
            by_sha.setdefault(restore.get(host, ""), []).append(host)
        for sha, group in by_sha.items():
            # A host that served nothing before (a first deploy) is stopped: nothing unproven keeps serving.
            found = _run_with_sha(registry, sha) if sha else (run, "")
            if found is None:
                progress(f"cannot return {', '.join(group)}: no run in the registry has weights {sha[:12]}")
                continue
            previous, path = found
            folder = evidence_dir / f"return-{sha[:12] or 'stop'}"
            folder.mkdir(exist_ok=True)
            progress(f"returning {', '.join(group)} to run {previous.id}" if sha else f"stopping {', '.join(group)}")
            variables = _rollback_vars(previous, path, sha, config, overrides, folder, server)
            variables.update(_local_ports(config, where))
            code = run_playbook(
                config, where.inventory, "rollback.yml", variables, folder, limit=group,
                nice=config.deploy.controller_nice,
            )  # fmt: skip
            for host in group:
                done = previous.id if sha else "stopped"
                returned[host] = done if code == 0 else f"FAILED to return (exit {code})"
    return returned


def _run_with_sha(registry: Registry, sha: str) -> tuple[Run, str] | None:
    for run in reversed(registry.runs()):
        model = run.artifact("model")
        if model is not None and model.sha256 == sha:
            return run, model.path
    return None


def _rollback_vars(
    run: Run, path: str, sha: str, config: Config, overrides: list[str], evidence: Path, server: dict[str, str]
) -> dict[str, Any]:
    return {
        "mlci_deploy_run": run.id,
        "mlci_deploy_sha256": sha,
        "mlci_deploy_artifact": str(Path(path).resolve()) if path else "",
        "mlci_deploy_config": str(config.path(config.source).resolve()),
        "mlci_deploy_overrides": overrides,
        "mlci_deploy_evidence": str(evidence),
        **server,
    }


def _report(config: Config, run: Run) -> str | None:
    report = config.path(config.registry.reports) / run.id / "report.html"
    return str(report) if report.is_file() else None
