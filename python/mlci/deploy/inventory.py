"""An environment's Ansible inventory, read with Ansible's own Python API, as the hosts mlci talks to.

Reading it in-process through Ansible's InventoryManager and VariableManager resolves group_vars, host_vars,
children and precedence exactly as ansible-playbook does, without paying for an ansible-playbook process.
Only the connection settings mlci uses are rendered with Ansible's Templar; a host's other variables are
handed over raw (rendering them could need facts or playbook variables that only exist in a play).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlci.config import Config
from mlci.errors import UsageError

DEFAULT_MANAGEMENT_PORT = 8001
DEFAULT_SSH_PORT = 22
# ansible_connection values that reach the host over SSH (the default when unset is ssh).
_SSH_CONNECTIONS = {"ssh", "paramiko", "paramiko_ssh", "smart", "ansible.builtin.ssh", "ansible.builtin.paramiko_ssh"}
_LOCAL_CONNECTIONS = {"local", "ansible.builtin.local"}
_NO_HOST_KEY_CHECK = re.compile(r"StrictHostKeyChecking\s*=?\s*(no|off)\b", re.IGNORECASE)


@dataclass(frozen=True)
class InventoryHost:
    name: str  # inventory_hostname
    connection: Literal["local", "ssh"]
    address: str  # ansible_host, else the name
    port: int  # SSH port (ansible_port, default 22)
    user: str  # ansible_user, default the current user
    key_file: Path | None  # ansible_ssh_private_key_file
    host_key_checking: bool  # False when the inventory turns it off for this host
    management_port: int  # model_server_management_port on the host's loopback
    hostvars: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # raw, unrendered


def inventory_path(config: Config, env: str | None) -> Path:
    """`--env NAME`: inventories/NAME beside mlci.toml; without it the config's deploy.inventory."""
    if env is None:
        path = config.path(config.deploy.inventory)
        if not path.exists():
            raise UsageError(f"deploy.inventory = {config.deploy.inventory!r}: {path} does not exist")
        return path
    if not env or "/" in env or env in (".", ".."):
        raise UsageError(f"--env {env!r}: must name a folder under {config.path('inventories')}")
    path = config.path("inventories") / env
    if not path.is_dir():
        known = environments(config)
        listed = ", ".join(known) if known else "none"
        raise UsageError(f"--env {env}: no inventory folder {path} (environments: {listed})")
    return path


def environments(config: Config) -> list[str]:
    """The inventory folders under inventories/ (the names `--env` accepts)."""
    folder = config.path("inventories")
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def hosts(inventory: Path, group: str = "serving") -> list[InventoryHost]:
    """The hosts of `group` in `inventory`, with their connection settings resolved as Ansible would.

    Read in a child process: importing Ansible patches the interpreter (sys.intern), which torch's compiler
    then trips over, so a long-lived caller (a test session, a training process) must never import it.
    """
    run = subprocess.run(
        [sys.executable, "-m", "mlci.deploy.inventory", str(inventory), group],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        lines = (run.stderr or run.stdout).strip().splitlines()
        raise UsageError(lines[-1] if lines else f"reading inventory {inventory} failed (exit {run.returncode})")
    return [
        InventoryHost(**{**h, "key_file": Path(h["key_file"]) if h["key_file"] else None})
        for h in json.loads(run.stdout)
    ]


def _read(inventory: Path, group: str) -> list[InventoryHost]:
    # Ansible is imported here, not at module level: `mlci status --help` and the CLI stay fast.
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    if not inventory.exists():
        raise UsageError(f"inventory {inventory} does not exist")
    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(inventory)])
    variables = VariableManager(loader=loader, inventory=manager)
    found = manager.groups.get(group)
    members = found.get_hosts() if found is not None else []
    if not members:
        why = "has no hosts" if found is not None else "does not exist"
        groups = ", ".join(sorted(g for g in manager.groups if g not in ("all", "ungrouped"))) or "none"
        raise UsageError(f"inventory {inventory}: group {group!r} {why} (groups: {groups})")
    out = []
    for host in sorted(members, key=lambda h: h.name):
        hostvars = variables.get_vars(host=host, include_hostvars=False)
        out.append(_host(host.name, hostvars, loader))
    return out


def _host(name: str, hostvars: dict[str, Any], loader: Any) -> InventoryHost:
    render = _Renderer(name, hostvars, loader)
    connection = render.text("ansible_connection", "ssh")
    if connection in _LOCAL_CONNECTIONS:
        kind: Literal["local", "ssh"] = "local"
    elif connection in _SSH_CONNECTIONS:
        kind = "ssh"
    else:
        raise UsageError(f"host {name}: ansible_connection = {connection!r}: mlci reaches hosts by ssh or local only")
    key_file = render.text("ansible_ssh_private_key_file", "") or render.text("ansible_private_key_file", "")
    ssh_args = " ".join(render.text(k, "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    checking = render.boolean("ansible_host_key_checking", True) and not _NO_HOST_KEY_CHECK.search(ssh_args)
    return InventoryHost(
        name=name,
        connection=kind,
        address=render.text("ansible_host", "") or render.text("ansible_ssh_host", "") or name,
        port=render.port("ansible_port", render.port("ansible_ssh_port", DEFAULT_SSH_PORT)),
        user=render.text("ansible_user", "") or render.text("ansible_ssh_user", "") or getpass.getuser(),
        key_file=Path(os.path.expanduser(key_file)) if key_file else None,
        host_key_checking=checking,
        management_port=render.port("model_server_management_port", DEFAULT_MANAGEMENT_PORT),
        hostvars=dict(hostvars),
    )


class _Renderer:
    """One host's variables through Ansible's Templar; every error names the host, variable and value."""

    def __init__(self, host: str, hostvars: dict[str, Any], loader: Any) -> None:
        from ansible.template import Templar

        self.host, self.hostvars = host, hostvars
        self.templar = Templar(loader=loader, variables=hostvars)

    def value(self, key: str) -> Any:
        raw = self.hostvars.get(key)
        if raw is None:
            return None
        try:
            return self.templar.template(raw)
        except Exception as exc:  # AnsibleError and its kin: undefined variables, syntax, filters
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"host {self.host}: {key} = {raw!r} cannot be rendered: {why}") from None

    def text(self, key: str, default: str) -> str:
        value = self.value(key)
        if value is None:
            return default
        if not isinstance(value, str | int):
            raise UsageError(f"host {self.host}: {key} = {value!r}: must be a string")
        return str(value).strip()

    def port(self, key: str, default: int) -> int:
        value = self.value(key)
        if value is None or value == "":
            return default
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if isinstance(value, bool) or not 1 <= port <= 65535:
            raise UsageError(f"host {self.host}: {key} = {value!r}: must be a TCP port (1-65535)")
        return port

    def boolean(self, key: str, default: bool) -> bool:
        from ansible.module_utils.parsing.convert_bool import boolean

        value = self.value(key)
        if value is None:
            return default
        try:
            return boolean(value, strict=True)
        except TypeError:
            raise UsageError(f"host {self.host}: {key} = {value!r}: must be true or false") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m mlci.deploy.inventory INVENTORY GROUP`: the hosts as JSON (what hosts() reads)."""
    inventory, group = (sys.argv[1:] if argv is None else argv)[:2]
    try:
        found = _read(Path(inventory), group)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = [{**dataclasses.asdict(h), "key_file": str(h.key_file) if h.key_file else None} for h in found]
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
