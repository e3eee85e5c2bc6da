"""The model server's offline wheelhouse: every wheel `python -m mlci serve` needs, pinned to this environment.

A serving host installs it with no network:
    python3 -m venv ROOT/venv && ROOT/venv/bin/pip install --no-index --find-links WH -r WH/requirements.txt

Pins are the versions installed here (importlib.metadata), so hosts run exactly what was tested here. The mlci
wheel is built from a clean copy of the checkout whose dependencies are those pins, because the project's own
list also names the controller's tools (Ansible, Locust, ...) that a serving host must not need.

Cache layout under `cache_dir`:
    deps/*.whl               dependency wheels, downloaded once per pinned version
    mlci/<source key>/*.whl  the mlci wheel per content of its sources and the pins it declares
    houses/<key>/            a finished wheelhouse: wheels (hard links), requirements.txt, wheelhouse.json
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from mlci.errors import WheelhouseError

# What `python -m mlci serve` imports (tests/unit/test_deploy_wheelhouse.py checks this list against the
# imports of every module on the serve path). Their own dependencies are added from their metadata.
SERVING_REQUIREMENTS: tuple[str, ...] = (
    "torch",  # the model (mlci.model, mlci.serve.loaded) and the forward pass
    "numpy",  # request tensors and batching (mlci.serve.protocol, mlci.serve.batching)
    "safetensors",  # artifact weights (mlci.artifacts.load_model: safetensors.torch)
    "starlette",  # the management API and the inference app's fallback routes (mlci.serve.app, .management)
    "uvicorn",  # serves the management API (mlci.serve.runner); without [standard]: its extras are unused
    "httptools",  # HTTP parsing of the inference listener and uvicorn's http="httptools" (mlci.serve.http)
    "uvloop",  # the event loop (mlci.serve.runner.serve)
    "orjson",  # request and response bodies (mlci.serve.protocol, .app, .management)
    "prometheus-client",  # /metrics (mlci.serve.metrics)
)
# Not imported by the server: pip installs the others in an image whose Python has no pip (docker runtime).
INSTALLER_REQUIREMENTS: tuple[str, ...] = ("pip",)
# What a training node needs beyond the server's (mlci.fleet_worker): the data check reads the files with pyarrow.
TRAINING_REQUIREMENTS: tuple[str, ...] = ("pyarrow",)

# The checkout's files that make up the mlci wheel; everything else (tests, roles, data) stays out.
_PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py", "MANIFEST.in")
_SOURCE_DIR = "python"
_IGNORED = re.compile(r"(^|/)(__pycache__|build|[^/]*\.egg-info)(/|$)|\.py[co]$")
# Same wheel bytes for the same sources whatever their mtimes: the digest must follow content only.
_SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip entry can hold
_PIP_TIMEOUT_S = 1800
_MANIFEST = "wheelhouse.json"


@dataclass(frozen=True)
class Wheelhouse:
    path: Path  # folder: *.whl + requirements.txt (exact pins and hashes, mlci last) + wheelhouse.json
    digest: str  # sha256 over the wheels' names and contents: the server version
    files: list[str]  # wheel file names, sorted


@dataclass(frozen=True)
class Pin:
    name: str  # canonical distribution name
    version: str  # as installed here

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def build(
    project_root: Path, cache_dir: Path, *, progress: Callable[[str], None] | None = None, extra: Iterable[str] = ()
) -> Wheelhouse:
    """The wheelhouse for the mlci checkout at `project_root`; reused from `cache_dir` when nothing changed.
    `extra` requirements (e.g. TRAINING_REQUIREMENTS) join the house; the mlci wheel still declares the server's."""
    say = progress or (lambda _msg: None)
    project_root, cache_dir = Path(project_root).resolve(), Path(cache_dir).resolve()
    pins = serving_pins([*SERVING_REQUIREMENTS, *INSTALLER_REQUIREMENTS, *extra])
    sources = _source_files(project_root)
    # The pins are part of the mlci wheel (its Requires-Dist), so they key it as its sources do; the interpreter's
    # best wheel tag picks the dependency wheels, so a cache shared by two Pythons keeps their wheelhouses apart.
    key_lines = [f"target={next(iter(sys_tags()))}", *map(str, pins)]
    source_key = _hash_lines(key_lines + [f"{f.as_posix()}={_sha256(project_root / f)}" for f in sources])
    house = cache_dir / "houses" / source_key[:32]
    cached = _read_house(house)
    if cached is not None:
        say(f"wheelhouse up to date: {house} ({cached.digest[:12]})")
        return cached
    dep_wheels = _dependency_wheels(pins, cache_dir / "deps", say)
    mlci_wheel = _mlci_wheel(project_root, sources, pins, cache_dir / "mlci" / source_key[:32], say)
    return _assemble(house, [*dep_wheels, mlci_wheel], say)


def serving_pins(requirements: Iterable[str] = SERVING_REQUIREMENTS) -> list[Pin]:
    """`requirements` and everything they need on this interpreter, pinned to the installed versions."""
    pins: dict[str, Pin] = {}
    todo = [(Requirement(r), "the serving requirements") for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, wanted_by = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        dist = _installed(req, wanted_by)
        if key in seen:
            continue
        seen.add(key)
        pins[key[0]] = Pin(key[0], dist.version)
        for line in dist.requires or ():
            sub = Requirement(line)
            if _applies(sub, req.extras):
                sub.marker = None  # evaluated for this interpreter, the target
                todo.append((sub, f"{dist.metadata['Name']} {dist.version}"))
    return sorted(pins.values(), key=lambda p: p.name)


def _installed(req: Requirement, wanted_by: str) -> metadata.Distribution:
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        raise WheelhouseError(f"{req} (wanted by {wanted_by}) is not installed here, so it has no pin") from None
    if not req.specifier.contains(dist.version, prereleases=True):
        raise WheelhouseError(f"{wanted_by} needs {req}, but {dist.version} is installed here")
    return dist


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    """Whether `req` holds on this interpreter for a parent installed with `extras`."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in ["", *extras])


def _source_files(project_root: Path) -> list[Path]:
    """The files the mlci wheel is built from, relative to `project_root`, sorted."""
    if not (project_root / "pyproject.toml").is_file():
        raise WheelhouseError(f"{project_root}: no pyproject.toml, so not an mlci checkout")
    files = [Path(name) for name in _PROJECT_FILES if (project_root / name).is_file()]
    for path in sorted((project_root / _SOURCE_DIR).rglob("*")):
        rel = path.relative_to(project_root)
        if path.is_file() and not _IGNORED.search(rel.as_posix()):
            files.append(rel)
    return sorted(files)


def _hash_lines(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_house(house: Path) -> Wheelhouse | None:
    """The finished wheelhouse in `house`, or None when it is missing or incomplete."""
    try:
        info = json.loads((house / _MANIFEST).read_text())
        sizes: dict[str, int] = info["sizes"]
        if any((house / name).stat().st_size != size for name, size in sizes.items()):
            return None
        return Wheelhouse(path=house, digest=info["digest"], files=sorted(sizes))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _dependency_wheels(pins: list[Pin], deps: Path, say: Callable[[str], None]) -> list[Path]:
    """One wheel per pin for this interpreter, downloading only those not in `deps` yet."""
    found = _cached_wheels(pins, deps)
    missing = [p for p in pins if p.name not in found]
    if missing:
        say(f"downloading {len(missing)} wheel(s): {' '.join(map(str, missing))}")
        deps.mkdir(parents=True, exist_ok=True)
        # --no-deps: the pins already hold the whole closure; pip's own resolver could pick other versions.
        _pip(["download", "--only-binary=:all:", "--no-deps", "--dest", str(deps), *map(str, missing)], "download")
        found = _cached_wheels(pins, deps)
        still = [str(p) for p in pins if p.name not in found]
        if still:
            raise WheelhouseError(f"pip download left no wheel for this interpreter in {deps} for: {' '.join(still)}")
    return [found[p.name] for p in pins]


def _cached_wheels(pins: list[Pin], deps: Path) -> dict[str, Path]:
    """pin name -> the wheel in `deps` of that exact version that best fits this interpreter."""
    rank = {tag: i for i, tag in enumerate(sys_tags())}  # sys_tags() lists the best fit first
    wanted = {p.name: Version(p.version) for p in pins}
    best: dict[str, tuple[int, Path]] = {}
    for path in deps.glob("*.whl") if deps.is_dir() else ():
        try:
            name, version, _build, tags = parse_wheel_filename(path.name)
        except ValueError:
            continue
        fit = min((rank[t] for t in tags if t in rank), default=None)
        if wanted.get(name) == version and fit is not None and (name not in best or fit < best[name][0]):
            best[name] = (fit, path)
    return {name: path for name, (_fit, path) in best.items()}


def _mlci_wheel(
    project_root: Path, sources: list[Path], pins: list[Pin], out: Path, say: Callable[[str], None]
) -> Path:
    """The mlci wheel of these sources, built once from a clean copy (no stale build/ dir can leak into it)."""
    built = sorted(out.glob("mlci-*.whl")) if out.is_dir() else []
    if built:
        return built[0]
    say("building the mlci wheel")
    with tempfile.TemporaryDirectory(prefix="mlci-wheel-") as tmp:
        copy = Path(tmp) / "src"
        for rel in sources:
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(project_root / rel, copy / rel)
        _serving_dependencies(copy / "pyproject.toml", [_pin_of(r, pins) for r in SERVING_REQUIREMENTS])
        dist = Path(tmp) / "dist"
        args = ["wheel", "--no-deps", "--wheel-dir", str(dist), str(copy)]
        if _build_backend_installed(copy / "pyproject.toml"):
            args.insert(1, "--no-build-isolation")  # faster, and needs no index when the backend is here
        _pip(args, "wheel (building mlci)", env={"SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH})
        wheels = list(dist.glob("mlci-*.whl"))
        if len(wheels) != 1:
            raise WheelhouseError(f"pip wheel built {[w.name for w in wheels]} from {project_root}, not one mlci wheel")
        out.mkdir(parents=True, exist_ok=True)
        partial = out / f".{wheels[0].name}.partial"
        shutil.copyfile(wheels[0], partial)
        return partial.replace(out / wheels[0].name)


def _pin_of(requirement: str, pins: list[Pin]) -> str:
    name = canonicalize_name(Requirement(requirement).name)
    return next(str(p) for p in pins if p.name == name)


def _serving_dependencies(pyproject: Path, requirements: list[str]) -> None:
    """Make `[project] dependencies` of `pyproject` exactly `requirements`, and check that it did."""
    text = pyproject.read_text()
    array = "[\n" + "".join(f"  {json.dumps(r)},\n" for r in requirements) + "]"
    new, n = re.subn(
        r"^dependencies\s*=\s*\[.*?^\]", lambda _m: f"dependencies = {array}", text, count=1, flags=re.M | re.S
    )
    try:
        ok = n == 1 and tomllib.loads(new)["project"]["dependencies"] == requirements
    except (tomllib.TOMLDecodeError, KeyError):
        ok = False
    if not ok:
        raise WheelhouseError(f"{pyproject}: cannot set [project] dependencies (expected a multi-line array)")
    pyproject.write_text(new)


def _build_backend_installed(pyproject: Path) -> bool:
    """Whether every `[build-system] requires` entry is installed here in a fitting version."""
    requires = tomllib.loads(pyproject.read_text()).get("build-system", {}).get("requires", [])
    for line in requires:
        req = Requirement(line)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(version, prereleases=True):
            return False
    return True


def _assemble(house: Path, wheels: list[Path], say: Callable[[str], None]) -> Wheelhouse:
    """Write the wheelhouse into `house` atomically: a half-written one is never taken for a finished one."""
    house.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{house.name}-", dir=house.parent))
    try:
        hashes = {}
        for wheel in wheels:
            _link_or_copy(wheel, tmp / wheel.name)
            hashes[wheel.name] = _sha256(wheel)
        files = sorted(hashes)
        digest = _hash_lines(f"{name} {hashes[name]}" for name in files)
        (tmp / "requirements.txt").write_text(_requirements(wheels, hashes, digest))
        sizes = {name: (tmp / name).stat().st_size for name in files}
        manifest = {
            "digest": digest,
            # The wheels' interpreter: a docker image's python3 must be the same version.
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "sizes": sizes,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            tmp.rename(house)
        except OSError:  # another build finished the same wheelhouse first: keep it
            if _read_house(house) is None:
                shutil.rmtree(house, ignore_errors=True)
                tmp.rename(house)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"wheelhouse built: {house} ({digest[:12]}, {len(files)} wheels)")
    return Wheelhouse(path=house, digest=digest, files=files)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # torch alone is ~200 MB: a hard link costs nothing
    except OSError:
        shutil.copyfile(src, dst)


def _requirements(wheels: list[Path], hashes: dict[str, str], digest: str) -> str:
    """Exact pins with hashes (pip then checks every wheel it installs); mlci last."""
    lines = [
        f"# mlci model server, wheelhouse {digest}",
        "# pip install --no-index --find-links DIR -r DIR/requirements.txt",
    ]
    for wheel in wheels:
        name, version, _build, _tags = parse_wheel_filename(wheel.name)
        lines.append(f"{name}=={version} --hash=sha256:{hashes[wheel.name]}")
    return "\n".join(lines) + "\n"


def _pip(args: list[str], what: str, *, env: dict[str, str] | None = None) -> None:
    """Run `python -m pip ARGS` with this interpreter; a failure raises with pip's last lines."""
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    try:
        proc = subprocess.run(
            cmd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PIP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise WheelhouseError(f"pip {what} took over {_PIP_TIMEOUT_S} s: {' '.join(cmd)}") from None
    except OSError as exc:
        raise WheelhouseError(f"cannot run pip {what} ({exc})") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise WheelhouseError(f"pip {what} failed (exit {proc.returncode}):\n{tail}")
