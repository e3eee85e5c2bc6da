"""The CI templates (Jenkinsfile, .gitlab-ci.yml, .github/workflows/mlci.yml) parse, keep their promised shape
(GPU runners, a lock, push / pull request / schedule triggers, JUnit on gates.xml, archived reports) and run
only `python3 -m nox -s SESSION` commands naming sessions that noxfile.py defines."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

NOX = re.compile(r"^python3 -m nox -s (?P<sessions>[a-z_]+(?: [a-z_]+)*)(?: -- (?P<args>.+))?$")


def noxfile_sessions() -> set[str]:
    """Names of the functions decorated with @nox.session (or @nox.session(..., name=...)) in noxfile.py."""
    names = set()
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            call = deco if isinstance(deco, ast.Call) else None
            target = call.func if call else deco
            if ast.unparse(target) == "nox.session":
                named = [k.value for k in (call.keywords if call else []) if k.arg == "name"]
                names.add(named[0].value if named and isinstance(named[0], ast.Constant) else node.name)
    return names


def assert_nox_only(commands: list[str], where: str) -> set[str]:
    """Every command is one nox call of known sessions; returns the sessions named."""
    known = noxfile_sessions()
    used: set[str] = set()
    assert commands, f"{where}: no commands at all"
    for command in commands:
        m = NOX.match(command.strip())
        assert m, f"{where}: {command!r} is not `python3 -m nox -s SESSION [-- ARGS]`"
        sessions = set(m["sessions"].split())
        assert sessions <= known, f"{where}: {command!r} names {sorted(sessions - known)}, not in noxfile.py"
        used |= sessions
    return used


def test_the_session_list_comes_from_the_noxfile() -> None:
    sessions = noxfile_sessions()
    assert {"train", "periodic", "deploy", "runs", "compare", "tests"} <= sessions
    assert "_mlci" not in sessions and "_environment" not in sessions


# --- GitLab ----------------------------------------------------------------------------------------------


def test_gitlab_ci_parses_and_runs_only_nox_sessions_on_gpu_runners() -> None:
    doc = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    assert doc["default"]["tags"] == ["gpu"]
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v and not k.startswith(".")}
    used = set()
    for name, job in jobs.items():
        used |= assert_nox_only(job["script"], f".gitlab-ci.yml: job {name}")
        assert set(job) <= {"stage", "script", "rules", "resource_group", "needs", "artifacts", "tags", "variables"}
        assert job.get("stage", "test") in doc["stages"]
    assert {"train", "compare", "periodic", "deploy"} <= used
    sources = " ".join(str(r.get("if")) for r in doc["workflow"]["rules"])
    assert "merge_request_event" in sources and "schedule" in sources and "CI_COMMIT_BRANCH" in sources
    assert "merge_request_event" in str(jobs["compare"]["rules"]) and "schedule" in str(jobs["periodic"]["rules"])
    assert jobs["train"]["artifacts"]["reports"]["junit"] == "reports/*/gates.xml"
    assert jobs["train"]["artifacts"]["when"] == "always"
    assert jobs["train"]["resource_group"] == jobs["periodic"]["resource_group"] == jobs["deploy"]["resource_group"]


# --- GitHub Actions --------------------------------------------------------------------------------------


def test_github_workflow_parses_and_runs_only_nox_sessions_on_self_hosted_gpu_runners() -> None:
    doc = yaml.safe_load((ROOT / ".github/workflows/mlci.yml").read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request", "schedule"} <= set(triggers)
    assert all(len(entry["cron"].split()) == 5 for entry in triggers["schedule"])
    used = set()
    for name, job in doc["jobs"].items():
        assert {"self-hosted", "gpu"} <= set(job["runs-on"]), name
        runs = [step["run"] for step in job["steps"] if "run" in step]
        used |= assert_nox_only(runs, f"mlci.yml: job {name}")
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), f"{name}: {step}"
            if "uses" in step:
                assert step["uses"].split("@")[0] in ("actions/checkout", "actions/upload-artifact"), step
    assert {"train", "compare", "periodic", "deploy"} <= used
    assert "pull_request" in doc["jobs"]["compare"]["if"] and "schedule" in doc["jobs"]["periodic"]["if"]
    compare = next(s["run"] for s in doc["jobs"]["compare"]["steps"] if "run" in s)
    assert "github.event.pull_request.base.sha" in compare
    groups = {job.get("concurrency", {}).get("group") for name, job in doc["jobs"].items() if name != "compare"}
    assert groups == {"mlci-registry"}  # training and periodic runs take turns on the registry


# --- Jenkins ---------------------------------------------------------------------------------------------


@dataclass
class Block:
    """`name (args) { ... }` of a declarative pipeline: its argument text, the step lines and nested blocks."""

    name: str
    args: str = ""
    lines: list[str] = field(default_factory=list)
    children: list[Block] = field(default_factory=list)

    def child(self, name: str) -> Block:
        found = [c for c in self.children if c.name == name]
        assert len(found) == 1, f"{self.name}: expected one `{name} {{...}}`, found {len(found)}"
        return found[0]

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


_TOKEN = re.compile(
    r"(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<string>'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\")"
    r"|(?P<open>\{)|(?P<close>\})|(?P<newline>\n)|(?P<other>[^{}'\"/\n]+|/)",
    re.S,
)


def parse_jenkinsfile(text: str) -> Block:
    """Strings and comments are tokens of their own, so a brace inside them counts for nothing; every `{` must
    close, and each block's header is the text before its `{` on that line (`stage('x')`, `when`)."""
    root = Block("<file>")
    stack = [root]
    line = ""
    pos = 0
    for m in _TOKEN.finditer(text):
        assert m.start() == pos, f"Jenkinsfile: cannot read at offset {pos}: {text[pos : pos + 30]!r}"
        pos = m.end()
        kind = m.lastgroup
        if kind == "comment":
            continue
        if kind == "open":
            header = line.strip()
            hm = re.fullmatch(r"(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<args>.*)\))?", header)
            assert hm, f"Jenkinsfile: a block must start with `name {{` or `name(args) {{`, not {header!r}"
            block = Block(hm["name"], hm["args"] or "")
            stack[-1].children.append(block)
            stack.append(block)
            line = ""
        elif kind == "close":
            if line.strip():
                stack[-1].lines.append(line.strip())
            line = ""
            assert len(stack) > 1, "Jenkinsfile: a `}` closes nothing"
            stack.pop()
        elif kind == "newline":
            if line.strip():
                stack[-1].lines.append(line.strip())
            line = ""
        else:
            line += m.group()
    assert pos == len(text), f"Jenkinsfile: unterminated string or comment at offset {pos}"
    assert len(stack) == 1, f"Jenkinsfile: `{stack[-1].name} {{` is never closed"
    return root


def _sh(line: str) -> str | None:
    m = re.fullmatch(r"sh\s*\(?\s*(['\"])(?P<cmd>.*)\1\s*\)?", line)
    return m["cmd"] if m else None


def test_jenkinsfile_is_a_declarative_pipeline_on_gpu_agents_with_cron_lock_junit_and_archive() -> None:
    root = parse_jenkinsfile((ROOT / "Jenkinsfile").read_text())
    assert [c.name for c in root.children] == ["pipeline"]
    pipeline = root.child("pipeline")
    assert pipeline.child("agent").lines == ["label 'gpu'"]
    cron = [line for line in pipeline.child("triggers").lines if line.startswith("cron(")]
    assert len(cron) == 1 and re.fullmatch(r"cron\('H [^']+'\)", cron[0]) and len(cron[0][6:-2].split()) == 5

    stages = pipeline.child("stages").children
    assert stages and all(s.name == "stage" and re.fullmatch(r"'[^']+'", s.args) for s in stages)
    commands = []
    for stage in stages:
        steps = stage.child("steps")
        for block in steps.walk():
            assert block.name in ("steps", "lock"), f"stage {stage.args}: unexpected block {block.name}"
            for line in block.lines:
                cmd = _sh(line)
                assert cmd is not None, f"stage {stage.args}: {line!r} is not an sh step"
                commands.append(cmd)
    used = assert_nox_only([c.replace('"${CHANGE_TARGET}"', "TARGET") for c in commands], "Jenkinsfile")
    assert {"train", "compare", "periodic", "deploy"} <= used
    locks = [b for s in stages for b in s.walk() if b.name == "lock"]
    assert locks and all("resource: 'mlci-registry'" in b.args for b in locks)
    whens = {s.args: " ".join(b.args + " " + " ".join(b.lines) for b in s.child("when").walk()) for s in stages}
    assert any("changeRequest" in w and "not" not in w for w in whens.values())  # pull requests compare
    assert any("TimerTrigger" in w and "not" not in w for w in whens.values())  # the cron runs periodic

    always = pipeline.child("post").child("always").lines
    assert any(line.startswith("junit(") and "'reports/*/gates.xml'" in line for line in always)
    assert any(line.startswith("archiveArtifacts(") and "'reports/**'" in line for line in always)


@pytest.mark.parametrize(
    "broken",
    [
        "pipeline {\n  agent { label 'gpu' }\n",  # never closed
        "pipeline {\n}\n}\n",  # a } too many
        "pipeline {\n  stages { stage('x') { steps { sh 'echo }' } }\n",  # the } in a string closes nothing
        "pipeline {\n  sh 'unterminated\n}\n",
    ],
)
def test_the_jenkinsfile_check_rejects_unbalanced_blocks(broken: str) -> None:
    with pytest.raises(AssertionError):
        parse_jenkinsfile(broken)
