"""Static checks of the Ansible side of the project, for every role (whoever wrote it): variables
prefixed, typed in meta/argument_specs.yml and listed in the README exactly as in defaults/; playbooks
and site.yml well-formed; ansible-lint's production profile clean with no global skips."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
PLAYBOOKS = ["site.yml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yml"))]


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def readme_variables(readme: str, role: str) -> set[str]:
    """Variable names listed under the README's `## Variables` heading (table rows or bullets)."""
    match = re.search(r"^## Variables\s*$(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
    if match is None:
        return set()
    return set(re.findall(rf"^\s*(?:\||-)\s*`({role}_\w+)`", match.group(1), flags=re.M))


def run_playbook(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """ansible-playbook from the project folder (its ansible.cfg): exit code, stdout, stderr."""
    run = subprocess.run(
        ["ansible-playbook", *args],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return run.returncode, run.stdout, run.stderr


def one_local_play(name: str, message: str) -> list[dict]:
    """A play of one debug task on every host, printing `message`: a marker that the play ran."""
    return [
        {
            "name": name,
            "hosts": "all",
            "gather_facts": False,
            "tasks": [{"name": "Say", "ansible.builtin.debug": {"msg": message}}],
        }
    ]


def test_the_core_roles_exist() -> None:
    assert {"common", "preflight", "docker", "ci_runner"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_readme_lists_exactly_the_defaults(role: str) -> None:
    defaults = _yaml(ROOT / "roles" / role / "defaults" / "main.yml")
    listed = readme_variables((ROOT / "roles" / role / "README.md").read_text(), role)
    assert set(defaults) == listed, (
        f"roles/{role}/README.md ## Variables and defaults/main.yml differ: "
        f"undocumented {sorted(set(defaults) - listed)}, documented but not defaults {sorted(listed - set(defaults))}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_prefixed_and_typed(role: str) -> None:
    defaults = _yaml(ROOT / "roles" / role / "defaults" / "main.yml")
    options = _yaml(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert [n for n in defaults if not n.startswith(f"{role}_")] == []
    assert sorted(set(defaults) - set(options)) == [], f"{role}: defaults without an argument spec"
    assert {n: s for n, s in options.items() if not s.get("type")} == {}, f"{role}: untyped options"


@pytest.mark.parametrize("role", ROLES)
def test_vars_files_hold_only_private_names_and_handlers_only_restart(role: str) -> None:
    for path in (ROOT / "roles" / role / "vars").glob("*.yml"):
        assert [n for n in _yaml(path) if not n.startswith(f"_{role}_")] == [], path
    handlers = ROOT / "roles" / role / "handlers" / "main.yml"
    for handler in yaml.safe_load(handlers.read_text()) or [] if handlers.exists() else []:
        text = json.dumps(handler)
        assert re.search(r"restart|reload", text, flags=re.I), f"{role}: handler {handler['name']!r} does not restart"


def test_site_is_only_import_playbook_lines() -> None:
    plays = yaml.safe_load((ROOT / "site.yml").read_text())
    assert plays and all(set(p) == {"name", "ansible.builtin.import_playbook"} for p in plays)
    assert [p["ansible.builtin.import_playbook"] for p in plays] == [
        "playbooks/preflight.yml",
        "playbooks/runners.yml",
        "playbooks/targets.yml",
    ]


@pytest.mark.parametrize("playbook", ["playbooks/preflight.yml", "playbooks/runners.yml", "playbooks/targets.yml"])
def test_playbooks_validate_first_and_tag_each_role_with_its_name(playbook: str) -> None:
    plays = yaml.safe_load((ROOT / playbook).read_text())
    assert plays[0]["ansible.builtin.import_playbook"] == "validate.yml"
    validate = yaml.safe_load((ROOT / "playbooks" / "validate.yml").read_text())
    assert validate[0]["tags"] == ["always"]
    roles = [r for p in plays[1:] for r in p.get("roles", [])]
    assert roles
    for role in roles:
        assert role["tags"] == [role["role"]], f"{playbook}: role {role['role']} tagged {role.get('tags')}"


def test_local_inventory_leaves_the_machine_alone() -> None:
    # The embedded default: no SSH, no sudo, no system roles.
    hosts = _yaml(ROOT / "inventories/local/hosts.yml")["all"]["children"]
    assert set(hosts) == {"serving"}
    assert hosts["serving"]["hosts"]["localhost"]["ansible_connection"] == "local"
    assert _yaml(ROOT / "inventories/local/group_vars/all.yml")["mlci_manage_system"] is False
    cfg = (ROOT / "ansible.cfg").read_text()
    assert re.search(r"^inventory = inventories/local$", cfg, flags=re.M)
    assert re.search(r"^pipelining = true$", cfg, flags=re.M)


def test_production_example_checks_host_keys_and_keeps_secrets_in_the_vault() -> None:
    cfg = (ROOT / "ansible.cfg").read_text()
    assert re.search(r"^host_key_checking = true$", cfg, flags=re.M)
    main = _yaml(ROOT / "inventories/production.example/group_vars/all/main.yml")
    assert main["ansible_become_password"] == "{{ vault_become_password }}"
    assert "vault_become_password" in _yaml(ROOT / "inventories/production.example/group_vars/all/vault.yml")
    for text in (p.read_text() for p in (ROOT / "inventories/production.example").rglob("*.yml")):
        assert "StrictHostKeyChecking=no" not in text


def test_the_default_strategy_is_linear_through_mitogen() -> None:
    assert re.search(r"^strategy = mlci_linear$", (ROOT / "ansible.cfg").read_text(), flags=re.M)
    # In a child process: importing ansible patches sys.intern, which torch's compiler then trips over.
    check = (
        "import importlib.util, sys\n"
        "import ansible_mitogen.strategy\n"
        "from ansible.plugins.strategy.linear import StrategyModule as Linear\n"
        "spec = importlib.util.spec_from_file_location('mlci_linear', sys.argv[1])\n"
        "plugin = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(plugin)\n"
        "print(issubclass(plugin.StrategyModule, ansible_mitogen.strategy.StrategyMixin),"
        " issubclass(plugin.StrategyModule, Linear))\n"
    )
    plugin = ROOT / "playbooks" / "strategy_plugins" / "mlci_linear.py"
    run = subprocess.run([sys.executable, "-c", check, str(plugin)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "True"], run.stdout + run.stderr


def _play_with_a_stand_in_mitogen(tmp_path: Path, init: str) -> str:
    """Run a one-task local play whose `ansible_mitogen` package is `init`; its output, checked to pass."""
    stand_in = tmp_path / "stand_in" / "ansible_mitogen"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(init)
    (tmp_path / "play.yml").write_text(
        yaml.safe_dump(one_local_play("Local", "STRATEGY-{{ ansible_play_batch | length }}"))
    )
    rc, stdout, stderr = run_playbook(
        "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"), env={"PYTHONPATH": str(stand_in.parent)}
    )
    out = stdout + stderr
    assert rc == 0 and "STRATEGY-1" in out, out
    return out


def test_the_default_strategy_runs_plain_linear_with_a_warning_when_mitogen_is_missing(tmp_path: Path) -> None:
    out = _play_with_a_stand_in_mitogen(tmp_path, "raise ImportError('hidden for this test')\n")
    assert "Mitogen is not installed" in out, out


def test_the_default_strategy_runs_plain_linear_when_mitogen_refuses_this_ansible_core(tmp_path: Path) -> None:
    # What Mitogen's loader does for an ansible-core release it does not support.
    refusal = (
        "from ansible.errors import AnsibleError\n"
        "raise AnsibleError('Your Ansible version (2.99.0) is too recent. The most recent version supported by "
        "Mitogen for Ansible is 2.19.x')\n"
    )
    out = _play_with_a_stand_in_mitogen(tmp_path, refusal)
    assert "Mitogen cannot run with ansible-core" in out and "too recent" in out, out
    assert out.count("running the plain linear strategy") == 1, out


def test_inventory_validation_names_every_bad_host_and_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {"ansible_connection": "local"},
                    "hosts": {"good": None, "stray": None, "odd": {"mlci_manage_system": "maybe"}},
                    "children": {"serving": {"hosts": {"good": None, "odd": None}}},
                }
            }
        )
    )
    (tmp_path / "run.yml").write_text(
        yaml.safe_dump(
            [
                {"name": "Validate", "ansible.builtin.import_playbook": str(ROOT / "playbooks" / "validate.yml")},
                *one_local_play("Must not start", "PLAY-AFTER-VALIDATION-RAN"),
            ]
        )
    )
    rc, stdout, stderr = run_playbook("-i", str(tmp_path / "hosts.yml"), str(tmp_path / "run.yml"))
    out = stdout + stderr
    assert rc == 2, out
    assert "stray: needs" in out and "(is in ['ungrouped'])" in out, out
    assert "odd: needs" in out and "(is maybe)" in out, out
    assert "good: needs" not in out and "PLAY-AFTER-VALIDATION-RAN" not in out, out


@pytest.mark.parametrize("inventory", ["inventories/local", "inventories/production.example"])
def test_syntax_check(inventory: str) -> None:
    run = subprocess.run(
        ["ansible-playbook", "-i", inventory, "--syntax-check", *PLAYBOOKS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_site_on_the_local_inventory_in_check_mode_touches_no_system_role(tmp_path: Path) -> None:
    env = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts")}
    rc, stdout, stderr = run_playbook(
        "--check", "-e", f"preflight_verdict_dir={tmp_path}", "site.yml", env=env, timeout=600
    )
    assert rc == 0, stdout[-3000:] + stderr[-2000:]
    out = json.loads(stdout)
    system = ("common :", "docker :", "ci_runner :", "nvidia_driver :", "cuda_toolkit :", "nvidia_container_toolkit :")
    ran = [
        task["task"]["name"]
        for play in out["plays"]
        for task in play["tasks"]
        if task["task"]["name"].startswith(system) and not all(r.get("skipped") for r in task["hosts"].values())
    ]
    assert ran == []
    assert list(json.loads((tmp_path / "verdict.json").read_text())["hosts"]) == ["localhost"]


@pytest.mark.slow
def test_ansible_lint_production_profile_without_global_skips() -> None:
    lint = shutil.which("ansible-lint")
    if lint is None:
        pytest.fail("ansible-lint is not installed (it is a dev dependency)")
    for name in (".ansible-lint", ".ansible-lint.yml", ".config/ansible-lint.yml"):
        config = ROOT / name
        if config.exists():
            settings = _yaml(config)
            assert not settings.get("skip_list") and not settings.get("warn_list"), f"{name} skips rules globally"
    run = subprocess.run(
        [
            lint,
            "--profile",
            "production",
            "--nocolor",
            "ansible.cfg",
            *PLAYBOOKS,
            "roles",
            "inventories/local",
            "inventories/production.example",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
