"""Idempotent `site.yml` on 3 and on 8 sandbox hosts, against a plain playbook measured in the same run.

Targets: the idempotent run (changed=0) on 3 hosts in <= 30 s, and on 8 hosts in <= 1.5x the 3-host time.
Baseline: a plain playbook of 14 task items (the usual shape: facts gathered every run, no pipelining, no
fact cache, Ansible's stock linear strategy) on the same hosts, so the figures can be read against this
machine's load at the time. For reference it also times site.yml under the stock linear strategy (no Mitogen).
It also counts the CPU seconds of each run, on the controller and inside the sandbox hosts: they share this
machine's cores, so that sum over the core count is the least time an 8-host run can take.

The bench runs its own sandbox (a throw-away clone of this repository, so its names, keys, inventory and
fact cache never touch the project's), converges it, times idempotent runs, then grows it to 8 hosts and
does the same. Everything it started is removed at the end.
site.yml runs with each group in one batch (mlci_provision_serial ["100%"]): the figures are the controller's
cost per host, which the default batches (a canary, then a quarter of a group at a time) would mix with one
more pass of the play per batch.
Usage: python3 bench/site.py [repeats]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlci.sandbox import Sandbox

# Each group in one batch (see the docstring).
ONE_BATCH = ("-e", '{"mlci_provision_serial": ["100%"]}')

ROOT = Path(__file__).resolve().parents[1]
CORES = os.cpu_count() or 1
PLAIN = """
- name: A plain playbook of 14 task items
  hosts: all
  gather_facts: true
  become: true
  tasks:
    - {name: Stat a file, ansible.builtin.stat: {path: /etc/hostname}}
    - {name: Keep a directory, ansible.builtin.file: {path: /opt/plain, state: directory, mode: "0755"}}
    - {name: Keep a file, ansible.builtin.copy: {content: "x\\n", dest: /opt/plain/x, mode: "0644"}}
    - {name: Keep a line, ansible.builtin.lineinfile: {path: /opt/plain/x, line: x}}
    - {name: Keep a user, ansible.builtin.user: {name: plain, system: true, create_home: false}}
    - {name: Keep a package, ansible.builtin.apt: {name: python3, state: present}}
    - {name: Keep cron running, ansible.builtin.systemd_service: {name: cron, state: started}}
    - name: Keep directories
      ansible.builtin.file: {path: "/opt/plain/{{ item }}", state: directory, mode: "0755"}
      loop: [a, b, c, d, e, f, g]
"""


def playbook(project: Path, *args: str, env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    run = subprocess.run(
        ["ansible-playbook", "-i", str(project / "inventories" / "sandbox"), *args],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    try:
        out = json.loads(run.stdout)
    except json.JSONDecodeError:
        sys.exit(f"ansible-playbook {args} printed no JSON (exit {run.returncode}):\n{run.stderr[-3000:]}")
    if run.returncode != 0:
        sys.exit(f"ansible-playbook {args} failed (exit {run.returncode}): {json.dumps(out['stats'])}")
    return seconds, out["stats"]


def cpu_ticks() -> tuple[int, int]:
    """Busy and total jiffies of the whole machine (controller and sandbox hosts share its cores)."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def controller_cpu() -> float:
    """CPU seconds of every finished child of this process: ansible-playbook, its workers, Mitogen, ssh."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hosts_cpu(box: Sandbox) -> float | None:
    """CPU seconds the sandbox hosts' containers have used so far, from their cgroups (v1 or v2); None when
    this machine's layout hides them."""
    total = 0.0
    for host in box.status():
        cid = box.client.containers.get(host.container).id
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = [
            Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
            Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat"),
        ]
        if v1.exists():
            total += int(v1.read_text()) / 1e9
        elif found := [path for path in v2 if path.exists()]:
            stat = dict(line.split() for line in found[0].read_text().splitlines())
            total += int(stat["usage_usec"]) / 1e6
        else:
            return None
    return total


@dataclass
class Figures:
    seconds: float  # median wall time of one idempotent run
    busy: float  # share of the machine's cores busy meanwhile (0..1)
    controller_cpu: float  # CPU seconds per run on the controller
    hosts_cpu: float | None  # CPU seconds per run on the sandbox hosts

    def cpu(self) -> str:
        hosts = "n/a" if self.hosts_cpu is None else f"{self.hosts_cpu:.1f} s"
        return f"CPU per run: controller {self.controller_cpu:.1f} s, hosts {hosts}"


def idempotent(project: Path, box: Sandbox, env: dict[str, str], repeats: int, *args: str) -> Figures:
    """Median seconds of `repeats` idempotent runs, and the CPU they took."""
    times = []
    busy0, total0 = cpu_ticks()
    controller0, hosts0 = controller_cpu(), hosts_cpu(box)
    for _ in range(repeats):
        seconds, stats = playbook(project, *args, env=env)
        changed = {host: s["changed"] for host, s in stats.items() if s["changed"]}
        if changed:
            sys.exit(f"not idempotent: changed tasks per host {changed}")
        times.append(seconds)
    busy1, total1 = cpu_ticks()
    controller1, hosts1 = controller_cpu(), hosts_cpu(box)
    return Figures(
        seconds=statistics.median(times),
        busy=(busy1 - busy0) / max(1, total1 - total0),
        controller_cpu=(controller1 - controller0) / repeats,
        hosts_cpu=None if hosts0 is None or hosts1 is None else (hosts1 - hosts0) / repeats,
    )


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="mlci-bench-site-") as tmp:
        project = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(project)], check=True)
        env = {"ANSIBLE_CACHE_PLUGIN_CONNECTION": str(project / ".mlci" / "ansible-facts")}
        plain_env = {
            **env,
            "ANSIBLE_PIPELINING": "false",
            "ANSIBLE_GATHERING": "implicit",
            "ANSIBLE_CACHE_PLUGIN": "memory",
            "ANSIBLE_STRATEGY": "linear",
        }
        linear_env = {**env, "ANSIBLE_STRATEGY": "linear"}
        plain = Path(tmp) / "plain.yml"
        plain.write_text(PLAIN)
        box = Sandbox(project, progress=lambda msg: print(f"  sandbox: {msg}", file=sys.stderr))
        figures: dict[int, tuple[Figures, Figures, Figures]] = {}
        try:
            for hosts in (3, 8):
                box.up(hosts)
                start = time.perf_counter()
                playbook(project, *ONE_BATCH, "site.yml", env=env)
                print(f"{hosts} hosts: converge (first run for new hosts) {time.perf_counter() - start:6.1f} s")
                playbook(project, str(plain), env=plain_env)
                site = idempotent(project, box, env, repeats, *ONE_BATCH, "site.yml")
                plain_run = idempotent(project, box, plain_env, repeats, str(plain))
                linear = idempotent(project, box, linear_env, repeats, *ONE_BATCH, "site.yml")
                figures[hosts] = (site, plain_run, linear)
                print(
                    f"{hosts} hosts: idempotent site.yml {site.seconds:6.1f} s, "
                    f"{site.busy:4.0%} of {CORES} cores busy, "
                    f"{site.cpu()} (stock linear strategy {linear.seconds:5.1f} s, "
                    f"plain 14-item playbook {plain_run.seconds:5.1f} s)"
                )
        finally:
            box.down()
    (s3, p3, l3), (s8, p8, l8) = figures[3], figures[8]
    ratio = s8.seconds / s3.seconds
    print()
    verdict = {True: "ok", False: "MISSED"}
    print(f"idempotent site.yml, 3 hosts: {s3.seconds:6.1f} s   target <= 30 s        {verdict[s3.seconds <= 30]}")
    print(
        f"idempotent site.yml, 8 hosts: {s8.seconds:6.1f} s   ratio 8/3 = {ratio:.2f}  "
        f"target <= 1.5 {verdict[ratio <= 1.5]}"
    )
    for label, three, eight in (("site.yml, stock linear:", l3, l8), ("plain 14-item playbook:", p3, p8)):
        print(
            f"{label:30} 3 hosts {three.seconds:5.1f} s, 8 hosts {eight.seconds:5.1f} s, "
            f"ratio 8/3 = {eight.seconds / three.seconds:.2f}"
        )
    if s8.hosts_cpu is not None:
        # Controller and sandbox hosts share this machine's cores: the 8-host run cannot finish sooner than its
        # CPU seconds spread over every core, however well the work overlaps.
        need = s8.controller_cpu + s8.hosts_cpu
        print(
            f"CPU bound: 8 hosts take {need:.1f} CPU s per run; on {CORES} cores no run is shorter than "
            f"{need / CORES:.1f} s, a ratio of at least {need / CORES / s3.seconds:.2f} against 3 hosts"
        )


if __name__ == "__main__":
    main()
