"""The ci_runner role's cron line, run for real on a sandbox runner with the environment cron gives a job.

Cron starts a job with `/bin/sh -c LINE`, SHELL=/bin/sh, PATH=/usr/bin:/bin, HOME and LOGNAME, in the user's
home, and no login shell (nothing from /etc/profile.d). The test reads the line the role installed from the
runner's crontab and runs exactly that under `env -i` with that environment, as the runner user: it must
run `nox -s periodic` in the checkout to success, and the job must see CUDA's PATH/LD_LIBRARY_PATH from the
file the cuda_toolkit role renders (here rendered from the role's own template, as no GPU exists).

The runner's project environment (.venv in the checkout) is built first, with torch's CPU wheel from this
machine, as an earlier run on a runner would have built it (nox would otherwise fetch torch from PyPI).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_gpu_roles_support import host_in_group, playbook, sandbox_inventory, task_results

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USER, HOME = "mlci-runner", "/home/mlci-runner"
CHECKOUT, LOG = "/srv/mlci-runner/mlci", "/var/log/mlci-runner/periodic.log"
CUDA_HOME = "/usr/local/cuda-12.4"

PREPARE = """
- name: Converge the runner and give it CUDA's environment file
  hosts: "{{ target }}"
  roles:
    - role: ci_runner
  tasks:
    - name: Render CUDA's environment file from the cuda_toolkit role's template
      ansible.builtin.template:
        src: "{{ playbook_dir_root }}/roles/cuda_toolkit/templates/mlci-cuda.sh.j2"
        dest: /etc/profile.d/mlci-cuda.sh
        mode: "0644"
      vars:
        _cuda_toolkit_cuda_home: "{{ cuda_home }}"
        _cuda_toolkit_release: "12.4"
        _cuda_toolkit_version: "12.4.1-1"
    - name: Copy torch's CPU wheel to the runner
      ansible.builtin.copy:
        src: "{{ wheel }}"
        dest: /tmp/wheels/
        mode: "0644"
    - name: Build the project environment in the checkout, as an earlier run would have
      ansible.builtin.shell: |
        set -eu
        cd {{ checkout }}
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check /tmp/wheels/{{ wheel | basename }}
        .venv/bin/pip install --quiet --disable-pip-version-check -e .
        python3 -c "import hashlib;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest(),end='')" \\
          > .venv/.mlci-installed
      args:
        executable: /bin/sh
        creates: "{{ checkout }}/.venv/.mlci-installed"
      become: true
      become_user: mlci-runner
"""

CRONTAB = """
- name: Read the installed cron line
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Read the runner's crontab
      ansible.builtin.command: crontab -l -u mlci-runner
      changed_when: false
"""

RUN_AS_CRON = """
- name: Run the installed cron line as cron would
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Run the periodic line with cron's environment
      ansible.builtin.command:
        argv:
          - runuser
          - -u
          - mlci-runner
          - --
          - env
          - -i
          - SHELL=/bin/sh
          - PATH=/usr/bin:/bin
          - HOME={{ home }}
          - LOGNAME=mlci-runner
          - /bin/sh
          - -c
          - "cd {{ home }} && : > {{ log }} && {{ line }}"
      changed_when: true
      failed_when: false
    - name: Read the job's log
      ansible.builtin.command: cat {{ log }}
      changed_when: false
"""

CLEANUP = """
- name: Take the stand-in CUDA environment off the runner
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Remove CUDA's environment file and the wheel
      ansible.builtin.file:
        path: "{{ item }}"
        state: absent
      loop: [/etc/profile.d/mlci-cuda.sh, /tmp/wheels]
"""


def _torch_wheel(where: Path) -> Path:
    """This machine's torch wheel (the CPU build; pip takes it from the local disk)."""
    import torch

    version = torch.__version__.split("+")[0]
    run = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(where), f"torch=={version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(where.glob("torch-*.whl"))
    if run.returncode != 0 or not wheels:
        pytest.fail(f"pip download torch=={version}: exit {run.returncode}\n{run.stderr[-2000:]}")
    return wheels[0]


def _cron_command(crontab: str) -> str:
    """The command of the role's periodic entry: the line after its five time fields."""
    lines = [ln for ln in crontab.splitlines() if ln and not ln.startswith("#") and "periodic.sh" in ln]
    assert len(lines) == 1, crontab
    assert "%" not in lines[0], lines[0]  # cron would turn a % into a newline
    return lines[0].split(None, 5)[5]


def test_cron_line_runs_nox_periodic_with_crons_environment_and_sees_cuda(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    inventory = sandbox_inventory(request)
    runner = host_in_group(inventory, "gpu_runners")
    extra = {"target": runner, "playbook_dir_root": str(ROOT), "cuda_home": CUDA_HOME, "checkout": CHECKOUT}
    try:
        playbook(inventory, PREPARE, tmp_path, {**extra, "wheel": str(_torch_wheel(tmp_path / "wheels"))})
        crontab = playbook(inventory, CRONTAB, tmp_path, {"target": runner})
        line = _cron_command(task_results(crontab, runner, "Read the runner's crontab")[0]["stdout"])
        out = playbook(inventory, RUN_AS_CRON, tmp_path, {"target": runner, "home": HOME, "log": LOG, "line": line})
    finally:
        playbook(inventory, CLEANUP, tmp_path, {"target": runner})

    assert line.startswith("flock -n /srv/mlci-runner/periodic.lock /srv/mlci-runner/periodic.sh"), line
    (run,) = task_results(out, runner, "Run the periodic line")
    log = task_results(out, runner, "Read the job's log")[0]["stdout"]
    assert run["rc"] == 0, f"exit {run['rc']}: {run.get('stderr')}\n{log[-3000:]}"

    # The job's environment: CUDA's, on top of cron's bare PATH, with no login shell involved.
    header = log.splitlines()[0]
    fields = dict(item.split("=", 1) for item in shlex.split(header.split(": ", 1)[1]))
    assert fields["CUDA_HOME"] == CUDA_HOME, header
    assert fields["PATH"] == f"{CUDA_HOME}/bin:/usr/bin:/bin", header
    assert fields["LD_LIBRARY_PATH"] == f"{CUDA_HOME}/lib64", header
    # nox ran the periodic session in the checkout, and it passed.
    assert "nox > Running session periodic" in log, log[-3000:]
    assert "nox > Session periodic was successful" in log, log[-3000:]
