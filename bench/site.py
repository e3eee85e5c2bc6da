"""Idempotent `site.yml` on 3 and on 8 sandbox hosts, against a plain playbook measured in the same run.

Targets: the idempotent run (changed=0) on 3 hosts in <= 30 s, and on 8 hosts in <= 1.5x the 3-host time.
Baseline: a plain playbook of 14 task items (the usual shape: facts gathered every run, no pipelining, no
fact cache, Ansible's stock linear strategy) on the same hosts, so the figures can be read against this
machine's load at the time. For reference it also times site.yml under the stock linear strategy (no Mitogen).

The bench runs its own sandbox (a throw-away clone of this repository, so its names, keys, inventory and
fact cache never touch the project's), converges it, times idempotent runs, then grows it to 8 hosts and
does the same. Everything it started is removed at the end.
Usage: python3 bench/site.py [repeats]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlci.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
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


def idempotent(project: Path, env: dict[str, str], repeats: int, *args: str) -> tuple[float, float]:
    """Median seconds of `repeats` idempotent runs, and how busy the machine's cores were meanwhile (0..1)."""
    times = []
    busy0, total0 = cpu_ticks()
    for _ in range(repeats):
        seconds, stats = playbook(project, *args, env=env)
        changed = {host: s["changed"] for host, s in stats.items() if s["changed"]}
        if changed:
            sys.exit(f"not idempotent: changed tasks per host {changed}")
        times.append(seconds)
    busy1, total1 = cpu_ticks()
    return statistics.median(times), (busy1 - busy0) / max(1, total1 - total0)


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
        figures: dict[int, tuple[float, float, float]] = {}
        try:
            for hosts in (3, 8):
                box.up(hosts)
                start = time.perf_counter()
                playbook(project, "site.yml", env=env)
                print(f"{hosts} hosts: converge (first run for new hosts) {time.perf_counter() - start:6.1f} s")
                playbook(project, str(plain), env=plain_env)
                site_s, busy = idempotent(project, env, repeats, "site.yml")
                plain_s, _ = idempotent(project, plain_env, repeats, str(plain))
                linear_s, _ = idempotent(project, linear_env, repeats, "site.yml")
                figures[hosts] = (site_s, plain_s, linear_s)
                print(
                    f"{hosts} hosts: idempotent site.yml {site_s:6.1f} s, {busy:4.0%} of {os.cpu_count()} cores busy "
                    f"(stock linear strategy {linear_s:5.1f} s, plain 14-item playbook {plain_s:5.1f} s)"
                )
        finally:
            box.down()
    (s3, p3, l3), (s8, p8, l8) = figures[3], figures[8]
    print()
    print(f"idempotent site.yml, 3 hosts: {s3:6.1f} s   target <= 30 s        {'ok' if s3 <= 30 else 'MISSED'}")
    print(
        f"idempotent site.yml, 8 hosts: {s8:6.1f} s   ratio 8/3 = {s8 / s3:.2f}  target <= 1.5 "
        f"{'ok' if s8 / s3 <= 1.5 else 'MISSED'}"
    )
    print(f"site.yml, stock linear:        3 hosts {l3:5.1f} s, 8 hosts {l8:5.1f} s, ratio 8/3 = {l8 / l3:.2f}")
    print(f"plain 14-item playbook:        3 hosts {p3:5.1f} s, 8 hosts {p8:5.1f} s, ratio 8/3 = {p8 / p3:.2f}")


if __name__ == "__main__":
    main()
