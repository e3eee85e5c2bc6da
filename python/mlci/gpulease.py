"""GPU leases: a job takes k free GPUs of this host for its whole life, and no other job gets them meanwhile.

A lease is an exclusive `flock` on one file per GPU (`gpu-<uuid>.lock` in the lease directory). The lock
belongs to the open file, which the job inherits across `exec`: it is held as long as the job's process (or a
child that kept the descriptor) lives, and the kernel drops it when the last holder exits, however it exits
(SIGKILL included). Nothing has to clean up after a killed job. The file's text (pid, command, time) only says who
holds it.

GPUs come from `nvidia-smi --query-gpu=...`; among the free ones the least used (memory, then utilisation)
are taken first.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mlci.errors import MlciError, UsageError

QUERY = "index,uuid,memory.used,memory.total,utilization.gpu"
DEFAULT_DIR = "/var/lib/mlci/gpu-leases"
DIR_ENV = "MLCI_GPU_LEASE_DIR"


class LeaseError(MlciError):
    """No lease can be had: no such GPUs on this host, or none free within the wait (exit 2)."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    memory_used: float  # MiB
    memory_total: float  # MiB
    utilization: float  # percent

    @property
    def load(self) -> tuple[float, float, int]:
        """Sort key: least memory in use first (as a fraction), then least busy, then the lowest index."""
        return (self.memory_used / self.memory_total if self.memory_total else 1.0, self.utilization, self.index)


@dataclass
class Lease:
    gpus: list[Gpu]
    files: list[int]  # open, flocked file descriptors (inheritable: the job keeps them)

    @property
    def visible_devices(self) -> str:
        return ",".join(str(g.index) for g in self.gpus)

    def environment(self) -> dict[str, str]:
        """CUDA numbers devices in nvidia-smi's (PCI bus) order only when asked to: ask, so index N is GPU N."""
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": self.visible_devices,
            "MLCI_GPU_UUIDS": ",".join(g.uuid for g in self.gpus),
        }

    def release(self) -> None:
        for fd in self.files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.files = []


def lease_dir(explicit: str | None = None) -> Path:
    path = Path(explicit or os.environ.get(DIR_ENV) or DEFAULT_DIR)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"GPU lease directory {path}: cannot create it ({exc.strerror}); give a writable one with "
            f"--lease-dir or {DIR_ENV} (every job of this host must use the same one)"
        ) from None
    return path


def gpus() -> list[Gpu]:
    """This host's GPUs as nvidia-smi reports them; [] when there is no nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LeaseError(f"{smi}: {exc}") from None
    if out.returncode != 0:
        raise LeaseError(f"{smi} exited {out.returncode}: {(out.stderr or out.stdout).strip()[:300]}")
    found = []
    for n, row in enumerate(csv.reader(io.StringIO(out.stdout)), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 5:
            raise LeaseError(f"{smi}: line {n}: expected 5 fields ({QUERY}), got {row!r}")
        index, uuid, used, total, util = (c.strip() for c in row)
        try:
            found.append(Gpu(int(index), uuid, _number(used), _number(total), _number(util)))
        except ValueError:
            raise LeaseError(f"{smi}: line {n}: not a number in {row!r}") from None
    return found


def _number(text: str) -> float:
    """nvidia-smi says `[N/A]` or `[Not Supported]` for what a GPU cannot report: count it as 0."""
    return 0.0 if text.startswith("[") else float(text)


def acquire(count: int, directory: Path, *, wait: float, note: str = "", poll: float = 0.2) -> Lease:
    """Lock `count` free GPUs, least used first; wait up to `wait` seconds for enough to be free."""
    available = gpus()
    if count > len(available):
        have = f"{len(available)} GPU(s)" if available else "no NVIDIA GPU (nvidia-smi not found)"
        raise LeaseError(f"asked for {count} GPU(s), but this host has {have}")
    deadline = time.monotonic() + wait
    while True:
        lease = _try(sorted(available, key=lambda g: g.load), count, directory, note)
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            raise LeaseError(
                f"asked for {count} GPU(s): only {len(available) - len(holders(directory))} of {len(available)} "
                f"free after waiting {wait:g} s; held by: {_describe(holders(directory))}"
            )
        time.sleep(poll)
        available = gpus()  # fresh figures: prefer what is least used now


def _try(ordered: list[Gpu], count: int, directory: Path, note: str) -> Lease | None:
    lease = Lease([], [])
    for gpu in ordered:
        if len(lease.gpus) == count:
            break
        fd = os.open(directory / f"gpu-{_safe(gpu.uuid)}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} gpu {gpu.index} since {time.strftime('%F %T')} {note}\n".encode())
        os.set_inheritable(fd, True)
        lease.gpus.append(gpu)
        lease.files.append(fd)
    if len(lease.gpus) < count:
        lease.release()  # all or nothing: never sit on some GPUs while waiting for more
        return None
    return lease


def holders(directory: Path) -> dict[str, str]:
    """Lease file -> what its holder wrote, for every lease held now."""
    held = {}
    for path in sorted(directory.glob("gpu-*.lock")):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held[path.name] = f.read().decode(errors="replace").strip()
    return held


def _describe(held: dict[str, str]) -> str:
    return "; ".join(text or name for name, text in held.items()) or "nobody (a GPU went away?)"


def _safe(uuid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in uuid)
