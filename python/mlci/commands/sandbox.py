"""`python -m mlci sandbox up|down|status [--hosts N]`: SSH test hosts on the local Docker engine."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlci.commands import parse, parser
from mlci.sandbox import DEFAULT_MIRROR, Sandbox, SandboxHost


def run(argv: list[str]) -> int:
    p = parser("sandbox", "Systemd test hosts with sshd on 127.0.0.1, written to inventories/sandbox/.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--hosts", type=int, default=3, help="how many hosts `up` starts (default: %(default)s)")
    p.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for the base image (default: %(default)s)")
    args = parse(p, argv)
    console = Console(stderr=True)
    root = Path(args.config).resolve().parent
    sandbox = Sandbox(root, mirror=args.mirror, progress=lambda msg: console.print(f"[dim]sandbox:[/] {msg}"))
    if args.action == "up":
        hosts = sandbox.up(args.hosts)
        _table(hosts)
        print(f"inventory: {sandbox.inventory_dir.relative_to(root)}/hosts.yml")
        print(f"try: ansible-playbook -i {sandbox.inventory_dir.relative_to(root)} site.yml")
    elif args.action == "down":
        removed = sandbox.down()
        print("removed: " + (", ".join(removed) if removed else "nothing (no sandbox was up)"))
    else:
        hosts = sandbox.status()
        if hosts:
            _table(hosts)
        else:
            print("no sandbox hosts (start them with `nox -s sandbox -- up`)")
    return 0


def _table(hosts: list[SandboxHost]) -> None:
    table = Table("host", "state", "ssh", "address", "groups")
    for h in hosts:
        table.add_row(h.name, h.state, f"127.0.0.1:{h.ssh_port}", h.address or "-", ", ".join(h.groups))
    Console().print(table)
