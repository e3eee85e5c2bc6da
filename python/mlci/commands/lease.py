"""`mlci lease --gpus K [--wait S] -- COMMAND ...`: run COMMAND on K free GPUs of this host, leased for its life.

The command replaces this process (exec) and inherits the lease's locks, so the lease ends exactly when the
job does, even under SIGKILL. It sees `CUDA_VISIBLE_DEVICES` (and `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so the
numbers are nvidia-smi's). Exit 2 when the host has fewer than K GPUs or none came free within the wait;
otherwise the command's own exit code.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from mlci.commands import parse, parser
from mlci.errors import UsageError


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    if "--" not in argv:
        raise UsageError("mlci lease: usage: mlci lease --gpus K [--wait S] [--lease-dir DIR] -- COMMAND [ARG ...]")
    cut = argv.index("--")
    options, command = argv[:cut], argv[cut + 1 :]
    p = parser("lease", "Run a command on K free GPUs of this host, leased until it exits.")
    p.add_argument("--gpus", type=int, required=True, metavar="K", help="how many GPUs the command gets")
    p.add_argument("--wait", type=float, default=600.0, metavar="S", help="wait this long for free GPUs (%(default)s)")
    p.add_argument("--lease-dir", help="lock directory shared by every job of this host (default: $MLCI_GPU_LEASE_DIR"
                   " or /var/lib/mlci/gpu-leases)")  # fmt: skip
    args = parse(p, options)
    if args.overrides:
        raise UsageError(f"mlci lease: unexpected {args.overrides[0]!r} before `--`")
    if args.gpus < 0 or args.wait < 0:
        raise UsageError(f"mlci lease: --gpus = {args.gpus}, --wait = {args.wait:g}: must not be negative")
    if not command:
        raise UsageError("mlci lease: no command after `--`")

    from mlci import gpulease

    directory = gpulease.lease_dir(args.lease_dir)
    lease = gpulease.acquire(args.gpus, directory, wait=args.wait, note=shlex.join(command)[:200])
    env = {**os.environ, **lease.environment()}
    shown = ", ".join(f"{g.index} ({g.uuid})" for g in lease.gpus) or "none"
    print(f"lease: GPU(s) {shown} for pid {os.getpid()}: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        lease.release()
        raise UsageError(f"mlci lease: cannot run {command[0]!r}: {exc.strerror}") from None
    return 0  # not reached: exec replaced this process
