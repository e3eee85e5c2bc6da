"""The gated rolling deploy: sandbox rollout under load, rollback, `nox -s train deploy` locally, cost per host.

    python3 bench/deploy.py [--skip-sandbox] [--skip-local] [--duration 45]

Every figure is printed next to a baseline measured in the same run, with the ratio:
1. rolling model update on the 3 sandbox serving hosts while Locust sends load through the load balancer
   (target <= 60 s): wall time against a plain playbook that walks the same hosts in the same batches
   (serial 1, 33 %, 100 %) with one ping each, which is what Ansible costs before the deploy does anything;
   failed requests; the load's p99 during the deploy against a steady-state load of the same length just
   before (target <= 1.5x); the bound this machine allows: the same load beside a burner that spends the
   deploy's controller CPU (Ansible, the canary's Locust) at its nice value (deploy.controller_nice) with no
   deploy at all; (1b) the same update under an open-loop load at half the closed loop's throughput; (1c) a
   server upgrade (a [serving] change replaces each host's server, one at a time) under the closed-loop load,
   its p99 against the same load just before;
2. `mlci rollback` (target <= 30 s), against the same plain playbook;
3. `nox -s train deploy` on the embedded default (local runtime) in a fresh copy whose .venv is this
   checkout's: the first run (target <= 60 s) and the no-op (target <= 5 s), against `python -c "import torch"`;
4. what one extra serving host costs a rolling update: the same update on 2 and on 3 serving hosts (an
   inventory copy whose serving group has 2 of the 3), wall and controller CPU seconds, against the plain
   playbook's own cost per host.

The sandbox is this checkout's (`Sandbox(ROOT)`): brought up with 5 hosts when it is not running and removed at
the end only then. Deploys run in throw-away snapshots of the checkout (bench/noop.py's), so the checkout's
registry, reports and serving folder are never touched. Load goes only to the sandbox's load balancer (its
address on the sandbox's own network). Training is short (train.epochs=10, evaluate.bootstrap=200) and the
canary's load test is the deploy tests' (4 s, 8 users), written into each copy's mlci.toml.
Timings on a shared machine are noisy: compare ratios from one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlci.config import load_config
from mlci.sandbox import Sandbox, SandboxHost
from noop import snapshot, timed, venv_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from deploy_support import set_keys  # noqa: E402  (the deploy tests' mlci.toml editor)

SANDBOX_HOSTS = 5  # 1 runner, 3 serving hosts, 1 load balancer (mlci.sandbox.assign_groups)
ENV = "sandbox"
ENV_TWO = "sandbox2"  # the same sandbox with 2 of its 3 serving hosts in the serving group
TARGET_ROLLOUT_S = 60.0
TARGET_P99_RATIO = 1.5
TARGET_ROLLBACK_S = 30.0
TARGET_LOCAL_FIRST_S = 60.0
TARGET_LOCAL_NOOP_S = 5.0
# The canary's latency limits are loose here: the bench measures the rollout under load, and on a shared 2-core
# machine the canary's own p99 (its gate) can pass 100 ms while other work runs.
SHORT = {
    "train": {"epochs": 10},
    "evaluate": {"bootstrap": 200},
    "loadtest": {"duration_s": 4, "users": 8, "p95_ms": 250.0, "p99_ms": 500.0},
    "deploy": {"canary_rps": 400.0},  # the canary's load test at a stated rate, not flat out on a live host
}
LOAD_USERS = 8
LOADBALANCER_PLAY = "- name: Load balancer\n  hosts: loadbalancer\n  roles: [loadbalancer]\n"
# Ansible's floor for a rolling update: the same hosts, the same batches, one round trip each.
PLAIN_PLAY = """
- name: Walk the serving hosts in the deploy's batches
  hosts: serving
  gather_facts: false
  serial: [1, "33%", "100%"]
  tasks:
    - name: Reach the host
      ansible.builtin.ping:
"""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def cpu() -> float:
    """CPU seconds of this process's finished children (and the children they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    wall: float
    cpu: float
    stdout: str


def run(cmd: list[str], cwd: Path, env: dict[str, str], *, ok: tuple[int, ...] = (0,), what: str = "") -> Timed:
    """Run to the end; wall seconds and the controller CPU seconds of its process tree. Exits on a bad code."""
    cpu0, start = cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, used = time.perf_counter() - start, cpu() - cpu0
    if done.returncode not in ok:
        sys.exit(
            f"bench: {what or ' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
        )
    return Timed(wall, used, done.stdout)


def environment() -> dict[str, str]:
    """This interpreter's bin first on PATH (ansible-playbook, nox), no colour, wide lines for the logs."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "COLUMNS": "200"}


def project_copy(where: Path) -> Path:
    """A snapshot of the checkout (a fresh git repository) with the bench's short settings in mlci.toml."""
    where.mkdir(parents=True)
    project = snapshot(where)
    set_keys(project / "mlci.toml", **SHORT)
    return project


def mlci(project: Path, *args: str, ok: tuple[int, ...] = (0,)) -> Timed:
    return run([sys.executable, "-m", "mlci", *args], project, environment(), ok=ok, what=f"mlci {' '.join(args)}")


def playbook(project: Path, inventory: Path, play: Path) -> Timed:
    cmd = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory), str(play)]
    return run(cmd, project, environment(), what=f"ansible-playbook {play.name}")


# --- sandbox ---------------------------------------------------------------------------------------------


@contextmanager
def sandbox() -> Iterator[list[SandboxHost]]:
    """This checkout's 5-host sandbox: reused when it runs, else brought up here and removed at the end."""
    box = Sandbox(ROOT, progress=lambda msg: print(f"  sandbox: {msg}", flush=True))
    running = [h for h in box.status() if h.state == "running"]
    reuse = len(running) >= SANDBOX_HOSTS and (box.inventory_dir / "hosts.yml").exists()
    try:
        yield running if reuse else box.up(SANDBOX_HOSTS)
    finally:
        if not reuse:
            box.down()


def lb_url(hosts: list[SandboxHost]) -> str:
    """The load balancer's address on the sandbox's own network: the only place this bench sends load."""
    (lb,) = [h for h in hosts if "loadbalancer" in h.groups]
    if not lb.address:
        sys.exit(f"bench: the load balancer {lb.name} has no address on the sandbox network")
    return f"http://{lb.address}"


def load(project: Path, url: str, seconds: int, out: Path, user_rps: float = 0.0) -> subprocess.Popen[bytes]:
    """Locust through the load balancer for `seconds` (bounded), its summary in `out`. The SLO parts that
    compare with the champion or ask a rate are off: this load is a probe, its gate is not the point.
    user_rps 0 is a closed loop (each user sends as soon as it has its answer: the servers run flat out);
    above 0 each user sends at that fixed rate (an open-loop load below capacity, as production traffic)."""
    cmd = [sys.executable, "-m", "mlci", "loadtest", "--url", url, "--duration", str(seconds),
           "--users", str(LOAD_USERS), "--output", str(out),
           "loadtest.max_p95_vs_champion=0", "loadtest.min_rps=0", f"loadtest.user_rps={user_rps}"]  # fmt: skip
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115  (closed with the process, in figures())
    return subprocess.Popen(cmd, cwd=project, env=environment(), stdout=log, stderr=log)


def figures(proc: subprocess.Popen[bytes], out: Path, seconds: int) -> dict:
    code = proc.wait(timeout=seconds + 120)
    if code not in (0, 1) or not (out / "summary.json").is_file():
        sys.exit(f"bench: the load test exited {code}:\n{out.with_suffix('.log').read_text()[-3000:]}")
    return json.loads((out / "summary.json").read_text())["figures"]


# One burner process: busy `share` of every 10 ms slice, asleep the rest, for `seconds`.
BURN = """
import sys, time
share, seconds, slice_s = float(sys.argv[1]), float(sys.argv[2]), 0.01
end = time.perf_counter() + seconds
while (now := time.perf_counter()) < end:
    busy_until = now + slice_s * share
    while time.perf_counter() < busy_until:
        pass
    time.sleep(slice_s * (1 - share))
"""


def burner(cores: float, seconds: float, nice: int) -> list[subprocess.Popen[bytes]]:
    """Processes that together use `cores` of CPU for `seconds` at the controller's nice value: the deploy's
    controller CPU without a deploy."""
    count = max(1, int(cores + 0.999))
    command = ["nice", "-n", str(nice)] if nice > 0 else []
    command += [sys.executable, "-c", BURN, str(cores / count), str(seconds)]
    return [subprocess.Popen(command) for _ in range(count)]


def two_host_inventory(project: Path) -> list[str]:
    """inventories/sandbox2: the sandbox inventory with its first 2 serving hosts in the serving group."""
    source, dest = project / "inventories" / ENV, project / "inventories" / ENV_TWO
    shutil.copytree(source, dest)
    data = yaml.safe_load((dest / "hosts.yml").read_text())
    serving = data["all"]["children"]["serving"]["hosts"]
    kept, dropped = list(serving)[:2], list(serving)[2:]
    data["all"]["children"]["serving"]["hosts"] = dict.fromkeys(kept)
    # Out of the inventory altogether: validate.yml refuses a host that belongs to no group.
    for name in dropped:
        del data["all"]["hosts"][name]
    (dest / "hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    # Generated, not the project's code: kept out of the run key like inventories/sandbox.
    with open(project / ".git" / "info" / "exclude", "a") as exclude:
        exclude.write(f"/inventories/{ENV_TWO}/\n")
    return kept


def train(project: Path, seed: int) -> str:
    mlci(project, "train", f"train.seed={seed}")
    from mlci.registry import Registry

    with Registry(project / ".mlci" / "registry.db") as registry:
        latest = registry.latest_run()
        assert latest is not None
        return latest.id


def deploy(project: Path, env: str, run_id: str, label: str) -> Timed:
    done = mlci(project, "deploy", "--env", env)
    if f"promoted: run {run_id}" not in done.stdout:
        sys.exit(f"bench: {label}: run {run_id} was not promoted:\n{done.stdout[-3000:]}")
    return done


def loads(steady: dict, during: dict, label: str) -> None:
    """Print a steady-state load and a load beside something else, and their p99 ratio against the target."""
    if label:
        print(f"  ({label})")
    for name, f in (("steady state, just before", steady), ("during", during)):
        print(
            f"  load {name:<26} {f['requests']:6d} requests, {f['failures']} failed, {f['rps']:6.1f} req/s, "
            f"p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms, p99 {f['p99_ms']} ms"
        )
    if steady["p99_ms"] and during["p99_ms"]:
        ratio = during["p99_ms"] / steady["p99_ms"]
        print(
            f"  p99 during / steady = {ratio:.2f}x   target <= {TARGET_P99_RATIO}x: "
            f"{verdict(ratio <= TARGET_P99_RATIO)}; failed requests: {during['failures']}"
        )


def bench_sandbox(tmp: Path, duration: int) -> None:
    with sandbox() as hosts:
        serving = [h.name for h in hosts if "serving" in h.groups]
        url = lb_url(hosts)
        project = project_copy(tmp / "sandbox")
        shutil.copytree(ROOT / "inventories" / ENV, project / "inventories" / ENV)
        inventory = project / "inventories" / ENV
        plain = tmp / "plain.yml"
        plain.write_text(PLAIN_PLAY)
        lb_play = tmp / "loadbalancer.yml"
        lb_play.write_text(LOADBALANCER_PLAY)
        print(f"sandbox: serving {', '.join(serving)} behind {url}; project copy {project}", flush=True)

        setup = time.perf_counter()
        playbook(project, inventory, lb_play)
        run_a = train(project, seed=0)
        first = deploy(project, ENV, run_a, "first deploy")
        print(
            f"  setup (not timed as a figure): load balancer, run {run_a}, first deploy {first.wall:.1f} s "
            f"(installs each host's venv); {time.perf_counter() - setup:.1f} s in all",
            flush=True,
        )
        run_b = train(project, seed=11)

        # 1. Rolling update under load, after a steady-state load of the same length.
        steady = figures(load(project, url, duration, tmp / "steady"), tmp / "steady", duration)
        proc = load(project, url, duration, tmp / "during")
        time.sleep(3)  # the load is at full strength before the canary changes
        rollout = deploy(project, ENV, run_b, "rolling update under load")
        during = figures(proc, tmp / "during", duration)
        walk3 = [playbook(project, inventory, plain) for _ in range(3)]

        # The bound this machine allows: the same closed-loop load with only the deploy's controller CPU
        # (ansible, the canary's Locust) spent beside it by a burner, no deploy at all.
        controller_cores = rollout.cpu / rollout.wall
        nice = load_config(project / "mlci.toml").deploy.controller_nice
        burners = burner(controller_cores, duration, nice)
        bound = figures(load(project, url, duration, tmp / "bound"), tmp / "bound", duration)
        for b in burners:
            b.wait()

        # 1c. A server upgrade under the same load: a [serving] change replaces each host's server, one host
        # at a time, on the same model (the champion, run B).
        steady_up = figures(load(project, url, duration, tmp / "steady-up"), tmp / "steady-up", duration)
        set_keys(project / "mlci.toml", serving={"keepalive_s": 14.0})
        proc = load(project, url, duration, tmp / "during-up")
        time.sleep(3)
        upgrade = mlci(project, "deploy", "--env", ENV, "--run", "champion")
        if f"promoted: run {run_b}" not in upgrade.stdout:
            sys.exit(f"bench: the server upgrade did not promote run {run_b}:\n{upgrade.stdout[-3000:]}")
        during_up = figures(proc, tmp / "during-up", duration)

        # 2. Rollback (to run A).
        rollback = mlci(project, "rollback", "--env", ENV)
        if f"rolled back: run {run_a}" not in rollback.stdout:
            sys.exit(f"bench: rollback did not return run {run_a}:\n{rollback.stdout[-3000:]}")

        # 1b. The same rolling update under an open-loop load at half the closed loop's throughput.
        run_e = train(project, seed=14)
        user_rps = round(steady["rps"] / 2 / LOAD_USERS, 1)
        steady_open = figures(
            load(project, url, duration, tmp / "steady-open", user_rps), tmp / "steady-open", duration
        )
        proc = load(project, url, duration, tmp / "during-open", user_rps)
        time.sleep(3)
        rollout_open = deploy(project, ENV, run_e, "rolling update under an open-loop load")
        during_open = figures(proc, tmp / "during-open", duration)
        plain3 = Timed(statistics.median(t.wall for t in walk3), statistics.median(t.cpu for t in walk3), "")
        base = plain3.wall
        print(f"\n1. rolling model update, 3 serving hosts, under load through the load balancer ({duration} s, "
              f"{LOAD_USERS} users; the deploy started 3 s into it)")  # fmt: skip
        print(
            f"  mlci deploy --env {ENV}: {rollout.wall:6.1f} s = {rollout.wall / base:5.1f}x the plain batch walk "
            f"({base:.1f} s, median of 3)   target <= {TARGET_ROLLOUT_S:.0f} s: "
            f"{verdict(rollout.wall <= TARGET_ROLLOUT_S)}"
        )
        print(f"  the deploy covered {min(1.0, rollout.wall / duration):.0%} of the load's {duration} s")
        loads(steady, during, "closed loop: the servers run flat out")
        print(f"  bound: the same closed-loop load beside a burner using the deploy's controller CPU "
              f"({controller_cores:.2f} cores at nice {nice}), no deploy:")  # fmt: skip
        loads(steady, bound, "")
        print(f"\n1b. the same rolling update under an open-loop load: {LOAD_USERS} users at {user_rps} req/s each "
              f"(half the closed loop's throughput); deploy {rollout_open.wall:.1f} s")  # fmt: skip
        loads(steady_open, during_open, "open loop")
        print(f"\n1c. a server upgrade (a [serving] change: each host's server replaced, one at a time) under the "
              f"closed-loop load; deploy {upgrade.wall:.1f} s")  # fmt: skip
        loads(steady_up, during_up, "closed loop")
        print("\n2. rollback, 3 serving hosts")
        print(
            f"  mlci rollback --env {ENV}: {rollback.wall:6.1f} s = {rollback.wall / base:5.1f}x the plain batch walk "
            f"({base:.1f} s)   target <= {TARGET_ROLLBACK_S:.0f} s: {verdict(rollback.wall <= TARGET_ROLLBACK_S)}"
        )

        # 4. One extra host: the same update (a new model everywhere, no load) on 2 and on 3 serving hosts.
        kept = two_host_inventory(project)
        inventory2 = project / "inventories" / ENV_TWO
        walk2 = [playbook(project, inventory2, plain) for _ in range(3)]
        run_c = train(project, seed=12)
        two = deploy(project, ENV_TWO, run_c, "2-host update")
        run_d = train(project, seed=13)
        three = deploy(project, ENV, run_d, "3-host update")

        plain2 = Timed(statistics.median(t.wall for t in walk2), statistics.median(t.cpu for t in walk2), "")

    print(f"\n4. one extra serving host (no load; a new model on every host; 2 hosts = {', '.join(kept)})")
    for label, deploy_t, walk in (("2 hosts", two, plain2), ("3 hosts", three, plain3)):
        print(f"  {label}: deploy {deploy_t.wall:6.1f} s wall, {deploy_t.cpu:6.1f} s controller CPU;"
              f"  plain batch walk {walk.wall:5.1f} s wall, {walk.cpu:5.1f} s CPU")  # fmt: skip
    extra_wall, extra_cpu = three.wall - two.wall, three.cpu - two.cpu
    walk_wall, walk_cpu = plain3.wall - plain2.wall, plain3.cpu - plain2.cpu
    print(
        f"  the third host adds {extra_wall:+.1f} s wall ({extra_wall / two.wall:+.0%} of 2 hosts) and "
        f"{extra_cpu:+.1f} s controller CPU ({extra_cpu / two.cpu:+.0%}); the plain walk's extra host: "
        f"{walk_wall:+.1f} s wall, {walk_cpu:+.1f} s CPU"
        + (f" (the deploy's extra host = {extra_wall / walk_wall:.1f}x the walk's)" if walk_wall > 0.05 else "")
    )
    print("  (serial [1, 33%, 100%]: 2 hosts roll in 2 batches, 3 hosts in 3)")


# --- local -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_local(tmp: Path) -> None:
    project = project_copy(tmp / "local")
    venv = venv_for(project)
    ports = {"port": free_port(), "management_port": free_port()}
    set_keys(project / "mlci.toml", serving=ports)
    env = {**environment(), "PYTHONPATH": str(project / "python")}
    nox = [sys.executable, "-m", "nox", "-s", "train", "deploy"]
    print(f"\nlocal: project copy {project}, .venv = {venv}, serving ports {ports}", flush=True)
    try:
        first = run(nox, project, env, what="nox -s train deploy (first)")
        if "promoted: run" not in first.stdout:
            sys.exit(f"bench: the first local deploy promoted nothing:\n{first.stdout[-3000:]}")
        again = run(nox, project, env, what="nox -s train deploy (no-op)")
        # Both sessions must no-op: train's "up to date: run" alone would let a real deploy pass unnoticed.
        if "up to date: run" not in again.stdout or " is serving on " not in again.stdout:
            sys.exit(f"bench: the second `nox -s train deploy` was not a no-op:\n{again.stdout[-3000:]}")
        torch = [timed([sys.executable, "-c", "import torch"], project, env) for _ in range(3)]
    finally:
        subprocess.run(
            [sys.executable, "-m", "mlci.deploy.local_server", "stop", "--root", str(project / ".mlci" / "serving")],
            cwd=project, env=env, capture_output=True, check=False,
        )  # fmt: skip
    base = statistics.median(t[0] for t in torch)
    base_cpu = statistics.median(t[1] for t in torch)
    print("\n3. nox -s train deploy, embedded default (local runtime), warm .venv")
    for label, t, target in (("first (train + deploy)", first, TARGET_LOCAL_FIRST_S),
                             ("second (no-op)", again, TARGET_LOCAL_NOOP_S)):  # fmt: skip
        print(
            f"  {label:<23} {t.wall:6.2f} s = {t.wall / base:6.1f}x the baseline (CPU {t.cpu:6.2f} s = "
            f"{t.cpu / base_cpu:5.1f}x)   target <= {target:.0f} s: {verdict(t.wall <= target)}"
        )
    print(f"  baseline: python -c 'import torch' {base:.2f} s (CPU {base_cpu:.2f} s), median of 3")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-sandbox", action="store_true", help="skip parts 1, 2 and 4 (the sandbox hosts)")
    p.add_argument("--skip-local", action="store_true", help="skip part 3 (nox -s train deploy, local runtime)")
    p.add_argument("--duration", type=int, default=45, help="seconds of each load (default: %(default)s)")
    args = p.parse_args()
    if args.duration < 5:
        p.error("--duration must be at least 5 seconds")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlci-bench-deploy-") as tmp:
        if not args.skip_sandbox:
            bench_sandbox(Path(tmp), args.duration)
        if not args.skip_local:
            bench_local(Path(tmp))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nbench took {time.perf_counter() - started:.0f} s; load average {load} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
