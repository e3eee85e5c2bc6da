"""`mlci lease --gpus K -- COMMAND`: real processes competing for a simulated GPU list.

The GPUs are a fake `nvidia-smi` first on PATH that answers mlci's exact query from a CSV file (and fails any
other query, so the test also pins what mlci asks). Everything else is real: the lease files and their flocks,
exec, SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

QUERY = "--query-gpu=index,uuid,memory.used,memory.total,utilization.gpu"


@pytest.fixture
def host(tmp_path: Path):
    """set_gpus(rows) writes the fake nvidia-smi's answer; env is what a job of this host runs with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    csv = tmp_path / "gpus.csv"
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        [ "$1" = "{QUERY}" ] && [ "$2" = "--format=csv,noheader,nounits" ] || {{ echo "bad query: $*" >&2; exit 9; }}
        cat "{csv}"
        """)
    )
    smi.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MLCI_GPU_LEASE_DIR": str(tmp_path / "leases"),
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)

    def set_gpus(rows: list[tuple[int, float, float, float]]) -> None:  # index, used MiB, total MiB, util %
        csv.write_text("".join(f"{i}, GPU-{i:04d}-fake, {u:g}, {t:g}, {p:g}\n" for i, u, t, p in rows))

    return set_gpus, env


def lease(env: dict[str, str], *args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlci", "lease", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )  # fmt: skip


def job(code: str) -> list[str]:
    return ["--", sys.executable, "-c", code]


PRINT_DEVICES = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['CUDA_DEVICE_ORDER'])"


def test_concurrent_jobs_never_share_a_gpu(host, tmp_path: Path) -> None:
    set_gpus, env = host
    set_gpus([(0, 0, 1000, 0), (1, 0, 1000, 0), (2, 0, 1000, 0)])
    marks = tmp_path / "in-use"
    marks.mkdir()
    # Each job claims a marker per GPU it was given with O_EXCL: a second holder of the same GPU fails loudly.
    claim = textwrap.dedent(f"""\
        import os, time
        gpus = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
        for g in gpus:
            try:
                os.close(os.open("{marks}/" + g, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                raise SystemExit("GPU " + g + " SHARED")
        time.sleep(0.4)
        for g in gpus:
            os.unlink("{marks}/" + g)
        print(",".join(gpus))
    """)
    jobs = [lease(env, "--gpus", str(1 + n % 2), "--wait", "120", *job(claim)) for n in range(6)]
    results = [(p.communicate(timeout=180), p.returncode) for p in jobs]
    results = [(code, out, err) for (out, err), code in results]
    for code, _, err in results:
        assert code == 0, err  # a job given a GPU another job held exits 1 with "GPU n SHARED"
    got = [out.strip().split(",") for _, out, _ in results]
    assert [len(g) for g in got] == [1 + n % 2 for n in range(6)]
    assert all(set(g) <= {"0", "1", "2"} and len(set(g)) == len(g) for g in got)


def test_a_sigkilled_holder_frees_its_gpus_and_a_waiting_job_gets_them(host) -> None:
    set_gpus, env = host
    set_gpus([(0, 0, 1000, 0), (1, 0, 1000, 0)])
    holder = lease(env, "--gpus", "2", *job("import time; print('holding', flush=True); time.sleep(600)"))
    try:
        assert holder.stdout.readline().strip() == "holding"  # type: ignore[union-attr]
        busy = lease(env, "--gpus", "1", "--wait", "0", *job("pass"))
        _, err = busy.communicate(timeout=60)
        assert busy.returncode == 2
        assert "0 of 2 free" in err and f"pid {holder.pid}" in err  # says who holds them

        waiter = lease(env, "--gpus", "2", "--wait", "120", *job(PRINT_DEVICES))
        os.kill(holder.pid, signal.SIGKILL)  # the job itself: exec made it the lease's holder
        holder.wait(timeout=30)
        out, err = waiter.communicate(timeout=150)
        assert waiter.returncode == 0, err
        assert out.split() == ["0,1", "PCI_BUS_ID"]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_least_used_free_gpus_are_taken_first(host) -> None:
    set_gpus, env = host
    set_gpus([(0, 900, 1000, 5), (1, 100, 1000, 90), (2, 100, 1000, 10), (3, 500, 1000, 0)])
    out = subprocess.run(
        [sys.executable, "-m", "mlci", "lease", "--gpus", "2", *job(PRINT_DEVICES)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "2,1"  # least memory first, then least utilisation


def test_the_jobs_exit_code_passes_through(host) -> None:
    set_gpus, env = host
    set_gpus([(0, 0, 1000, 0)])
    out = subprocess.run(
        [sys.executable, "-m", "mlci", "lease", "--gpus", "1", *job("raise SystemExit(7)")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 7, out.stderr


@pytest.mark.parametrize(
    ("gpus", "want"),
    [
        ([(0, 0, 1000, 0), (1, 0, 1000, 0)], "this host has 2 GPU(s)"),
        (None, "this host has no NVIDIA GPU (nvidia-smi not found)"),
    ],
)
def test_asking_for_more_gpus_than_exist_exits_2_at_once(host, gpus, want) -> None:
    set_gpus, env = host
    if gpus is None:
        env = {**env, "PATH": os.path.dirname(sys.executable)}  # python only: no nvidia-smi anywhere
    else:
        set_gpus(gpus)
    out = subprocess.run(
        [sys.executable, "-m", "mlci", "lease", "--gpus", "3", "--wait", "600", *job("pass")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"asked for 3 GPU(s), but {want}" in out.stderr


def test_a_lease_directory_that_cannot_be_made_exits_2_naming_it(host, tmp_path: Path) -> None:
    set_gpus, env = host
    set_gpus([(0, 0, 1000, 0)])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "mlci", "lease", "--gpus", "1", "--lease-dir", str(blocker / "leases"), *job("pass")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and str(blocker / "leases") in out.stderr
