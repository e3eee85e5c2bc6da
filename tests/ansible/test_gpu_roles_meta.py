"""Static contract of the GPU, load balancer and model_server roles: every public variable is prefixed,
typed in meta/argument_specs.yml and listed in the README; ansible-lint's production profile passes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["nvidia_driver", "cuda_toolkit", "nvidia_container_toolkit", "loadbalancer", "model_server"]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_prefixed_typed_and_documented(role: str) -> None:
    base = ROOT / "roles" / role
    defaults = _load(base / "defaults/main.yml")
    options = _load(base / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    readme = (base / "README.md").read_text()
    documented = set(re.findall(rf"^\| `({role}_\w+)` \|", readme, flags=re.M))

    assert defaults, f"{role}: defaults/main.yml is empty"
    assert all(name.startswith(f"{role}_") for name in defaults), f"{role}: unprefixed default"
    assert set(options) == set(defaults), f"{role}: argument spec and defaults differ"
    assert all(spec.get("type") for spec in options.values()), f"{role}: an option has no type"
    assert documented == set(defaults), f"{role}: README table and defaults differ"


@pytest.mark.parametrize("role", ROLES)
def test_os_differences_come_from_vars_files_not_defaults(role: str) -> None:
    # Private names (leading underscore) never appear in defaults, and vars/ holds only private names.
    base = ROOT / "roles" / role
    for path in (base / "vars").glob("*.yml"):
        assert all(name.startswith(f"_{role}_") for name in _load(path)), path


@pytest.mark.slow
def test_ansible_lint_production_profile_passes() -> None:
    lint = shutil.which("ansible-lint")
    if lint is None:
        pytest.skip("ansible-lint is not installed")
    paths = [f"roles/{role}" for role in ROLES]
    run = subprocess.run(
        [lint, "--profile", "production", "--nocolor", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
