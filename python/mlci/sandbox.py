"""The sandbox: systemd test hosts on the local Docker engine, reached over real SSH on 127.0.0.1.

`up` builds (once, cached) a Debian 12 base image offline from Debian's packages (debootstrap | docker
import) and a test-host image on top (systemd, sshd, python3), starts N hosts on a private bridge network
with only the capabilities systemd needs (never --privileged), publishes each sshd on 127.0.0.1 and writes
inventories/sandbox/. `down` removes everything it made except the cached images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlci.errors import SandboxError

IMAGE_DIR = Path(__file__).with_name("sandbox_image")
BASE_REPO = "mlci-sandbox-base"
HOST_REPO = "mlci-sandbox-host"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LABEL = "io.mlci.sandbox"
MAX_HOSTS = 16
GROUPS = ("gpu_runners", "serving", "loadbalancer")
# What systemd needs inside a container, one capability at a time (--privileged fails on these machines).
CAPABILITIES = ["SYS_ADMIN", "NET_ADMIN"]
SECURITY_OPT = ["seccomp=unconfined", "apparmor=unconfined"]
READY_TIMEOUT_S = 120.0
# Certificate authorities this machine trusts beyond the distribution's (a site's TLS proxy, say): the test
# hosts trust them too, as a site's base image would, so pip and apt over HTTPS work from inside them.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SandboxHost:
    name: str  # inventory_hostname and the container's hostname
    container: str
    state: str
    ssh_port: int | None
    address: str | None  # on the sandbox network
    groups: tuple[str, ...] = field(default=())


def assign_groups(count: int) -> list[tuple[str, ...]]:
    """Groups per host: one load balancer (the last host), about a quarter runners, the rest serving.

    1 host plays every part; 2 hosts split runner and serving+lb; from 3 on each group has its own hosts.
    """
    if count == 1:
        return [GROUPS]
    if count == 2:
        return [("gpu_runners",), ("serving", "loadbalancer")]
    runners = max(1, count // 4)
    out: list[tuple[str, ...]] = []
    for i in range(count):
        if i < runners:
            out.append(("gpu_runners",))
        elif i == count - 1:
            out.append(("loadbalancer",))
        else:
            out.append(("serving",))
    return out


class Sandbox:
    """One project's sandbox. Names carry a short hash of the project path, so checkouts never collide."""

    def __init__(self, root: Path, *, mirror: str = DEFAULT_MIRROR, progress: Progress | None = None) -> None:
        self.root = root.resolve()
        self.mirror = mirror
        self.progress = progress or (lambda _msg: None)
        self.project = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        self.state_dir = self.root / ".sandbox"
        self.inventory_dir = self.root / "inventories" / "sandbox"
        self.key_path = self.state_dir / "id_ed25519"
        self.bundle_path = self.state_dir / "mlci.bundle"
        self.facts_dir = self.root / ".mlci" / "ansible-facts"
        self.network_name = f"mlci-sandbox-{self.project}"
        self._client: Any = None
        self.commit = ""

    # --- docker engine -----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect()
        return self._client

    def _labels(self) -> dict[str, str]:
        return {LABEL: self.project}

    def _containers(self) -> list[Any]:
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.project}"})
        return sorted(found, key=lambda c: _host_index(c.labels.get(f"{LABEL}.host", "0")))

    # --- public operations -------------------------------------------------------------------------

    def up(self, hosts: int) -> list[SandboxHost]:
        if not 1 <= hosts <= MAX_HOSTS:
            raise SandboxError(f"--hosts = {hosts}: must be between 1 and {MAX_HOSTS}")
        with self._lock():
            image = self._host_image()
            public_key = self._key_pair()
            self.commit = self._bundle()
            network = self._network()
            wanted = {self._container_name(i): i for i in range(1, hosts + 1)}
            for container in self._containers():
                if container.name not in wanted or container.status != "running":
                    self.progress(f"removing {container.name} ({container.status})")
                    self._remove_host(container)
            existing = {c.name for c in self._containers()}
            started = [name for name in wanted if name not in existing]
            for name in started:
                self._start_host(image, network, wanted[name], public_key)
            self._wait_ready()
            for name in started:
                self._trust_local_cas(name)
            found = self.status()
            self._write_inventory(found)
            return found

    def down(self) -> list[str]:
        with self._lock():
            removed = []
            for container in self._containers():
                self.progress(f"removing {container.name}")
                self._remove_host(container)
                removed.append(container.name)
            for volume in self.client.volumes.list(filters={"label": f"{LABEL}={self.project}"}):
                volume.remove(force=True)
            for network in self.client.networks.list(filters={"label": f"{LABEL}={self.project}"}):
                network.remove()
                removed.append(f"network {network.name}")
            self._forget_facts(self._host_name(i) for i in range(1, MAX_HOSTS + 1))
            if self.inventory_dir.exists():
                shutil.rmtree(self.inventory_dir)
                removed.append(str(self.inventory_dir.relative_to(self.root)))
            for path in (self.key_path, self.key_path.with_suffix(".pub"), self.bundle_path):
                path.unlink(missing_ok=True)
            return removed

    def status(self) -> list[SandboxHost]:
        containers = self._containers()
        groups = assign_groups(len(containers)) if containers else []
        out = []
        for container, host_groups in zip(containers, groups, strict=True):
            container.reload()
            bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get("22/tcp") or []
            port = int(bindings[0]["HostPort"]) if bindings else None
            nets = container.attrs["NetworkSettings"]["Networks"] or {}
            address = (nets.get(self.network_name) or {}).get("IPAddress") or None
            out.append(
                SandboxHost(
                    name=container.labels.get(f"{LABEL}.name", container.name),
                    container=container.name,
                    state=container.status,
                    ssh_port=port,
                    address=address,
                    groups=host_groups,
                )
            )
        return out

    # --- images ------------------------------------------------------------------------------------

    def _host_image(self) -> str:
        """The test-host image, tagged by a hash of its build files so an edit rebuilds it."""
        base = self._base_image()
        digest = hashlib.sha256()
        for path in sorted(IMAGE_DIR.iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        tag = f"{HOST_REPO}:{digest.hexdigest()[:12]}"
        if not self._image_exists(tag):
            self.progress(f"building the test-host image {tag} (once)")
            try:
                self.client.images.build(
                    path=str(IMAGE_DIR),
                    tag=tag,
                    buildargs={"BASE": base},
                    rm=True,
                    forcerm=True,
                    network_mode="bridge",
                    labels={LABEL: "image"},
                )
            except Exception as exc:  # docker.errors.BuildError carries the build log
                log = "".join(str(c.get("stream", "")) for c in getattr(exc, "build_log", []) or [])
                raise SandboxError(f"building {tag} failed: {exc}\n{log[-3000:]}") from None
        return tag

    def _base_image(self) -> str:
        tag = f"{BASE_REPO}:{SUITE}"
        if self._image_exists(tag):
            return tag
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise SandboxError(
                "debootstrap is not installed; it builds the sandbox's Debian base image offline "
                "(as root: apt-get install debootstrap)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.progress(f"building the Debian {SUITE} base image {tag} with debootstrap (once, about a minute)")
        with tempfile.TemporaryDirectory(dir=self.state_dir, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    "--include=python3,openssh-server,sudo,ca-certificates",
                    SUITE,
                    str(rootfs),
                    self.mirror,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if run.returncode != 0:
                raise SandboxError(
                    f"debootstrap {SUITE} from {self.mirror} failed (exit {run.returncode}; it needs root):\n"
                    f"{(run.stderr or run.stdout)[-2000:]}"
                )
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
            try:
                self.client.api.import_image_from_data(tar.stdout, repository=BASE_REPO, tag=SUITE)
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
            if not self._image_exists(tag):
                raise SandboxError(f"docker import of {rootfs} did not produce {tag}")
        return tag

    def _image_exists(self, tag: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    # --- hosts -------------------------------------------------------------------------------------

    def _container_name(self, index: int) -> str:
        return f"mlci-sandbox-{self.project}-{index}"

    @staticmethod
    def _host_name(index: int) -> str:
        return f"sandbox-{index}"

    def _network(self) -> Any:
        found = self.client.networks.list(names=[self.network_name])
        if found:
            return found[0]
        return self.client.networks.create(self.network_name, driver="bridge", labels=self._labels())

    def _docker_volume(self, container_name: str) -> str:
        return f"{container_name}-docker"

    def _remove_host(self, container: Any) -> None:
        """The container and its engine volume: a host that goes away leaves nothing behind."""
        container.remove(force=True, v=True)
        self._remove_docker_volume(container.name)

    def _remove_docker_volume(self, container_name: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            self.client.volumes.get(self._docker_volume(container_name)).remove(force=True)

    def _start_host(self, image: str, network: Any, index: int, public_key: str) -> None:
        name, host = self._container_name(index), self._host_name(index)
        self.progress(f"starting {host} ({name})")
        self._forget_facts([host])
        # A fresh host gets a fresh engine volume (a leftover would carry an old engine's state).
        self._remove_docker_volume(name)
        volume = self.client.volumes.create(self._docker_volume(name), labels=self._labels())
        container = self.client.containers.create(
            image,
            name=name,
            hostname=host,
            detach=True,
            labels={**self._labels(), f"{LABEL}.host": str(index), f"{LABEL}.name": host},
            cap_add=CAPABILITIES,
            security_opt=SECURITY_OPT,
            tmpfs={"/run": "rw,exec", "/run/lock": "rw"},
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                # A Docker engine inside a serving host needs a real filesystem, not the overlay root.
                volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
            },
            ports={"22/tcp": ("127.0.0.1", None)},
            network=network.name,
        )
        container.put_archive("/root", _authorized_keys_tar(public_key))
        local_cas = sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
        if local_cas:
            container.put_archive("/", _site_trust_tar(local_cas))
        container.start()

    def _trust_local_cas(self, name: str) -> None:
        """Rebuild the host's CA bundle once it booted (the files went in before start)."""
        if not (LOCAL_CA_DIR.is_dir() and any(LOCAL_CA_DIR.glob("*.crt"))):
            return
        code, out = self.client.containers.get(name).exec_run(["update-ca-certificates"])
        if code != 0:
            raise SandboxError(f"{name}: update-ca-certificates failed: {out.decode(errors='replace')[-500:]}")

    def _wait_ready(self) -> None:
        """Bounded wait until systemd finished booting and every sshd answers with its banner."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = {h.name: h for h in self.status()}
        last = ""
        while pending and time.monotonic() < deadline:
            for name, host in {h.name: h for h in self.status()}.items():
                if name not in pending:
                    continue
                if host.state != "running":
                    raise SandboxError(f"{name} stopped while booting ({host.state}): docker logs {host.container}")
                container = self.client.containers.get(host.container)
                _code, out = container.exec_run(["systemctl", "is-system-running"])
                last = out.decode(errors="replace").strip()
                if last in ("running", "degraded") and host.ssh_port and _ssh_banner(host.ssh_port):
                    del pending[name]
            if pending:
                time.sleep(0.5)
        if pending:
            raise SandboxError(
                f"hosts not ready after {READY_TIMEOUT_S:.0f} s: {', '.join(sorted(pending))} (systemd says {last!r})"
            )

    def _key_pair(self) -> str:
        """An ed25519 key pair under .sandbox/ (gitignored, never committed); returns the public line."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        pub_path = self.key_path.with_suffix(".pub")
        if not (self.key_path.exists() and pub_path.exists()):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            private = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            self.key_path.unlink(missing_ok=True)
            self.key_path.touch(mode=0o600)
            self.key_path.write_bytes(private)
            pub_path.write_text(public.decode() + f" mlci-sandbox-{self.project}\n")
        return pub_path.read_text()

    def _bundle(self) -> str:
        """A git bundle of HEAD: the runners' checkout source, frozen for the sandbox's lifetime.

        Returns the commit it holds (the runners check out exactly that one).
        """
        if not self.bundle_path.exists():
            _git(self.root, "bundle", "create", str(self.bundle_path), "HEAD")
        return _git(self.root, "bundle", "list-heads", str(self.bundle_path)).split()[0]

    def _forget_facts(self, hosts: Iterator[str] | list[str]) -> None:
        """Drop cached Ansible facts of hosts that are (re)created: a new container is a new machine."""
        if not self.facts_dir.is_dir():
            return
        names = set(hosts)
        for path in self.facts_dir.iterdir():
            # The jsonfile cache names a file after the host, with a format prefix ("s1_") in newer releases.
            if path.name in names or path.name.partition("_")[2] in names:
                path.unlink(missing_ok=True)

    # --- inventory ---------------------------------------------------------------------------------

    def _write_inventory(self, hosts: list[SandboxHost]) -> None:
        self.inventory_dir.mkdir(parents=True, exist_ok=True)
        (self.inventory_dir / "group_vars").mkdir(exist_ok=True)
        inventory: dict[str, Any] = {
            "all": {
                "hosts": {h.name: {"ansible_port": h.ssh_port, "sandbox_address": h.address} for h in hosts},
                "children": {g: {"hosts": {h.name: None for h in hosts if g in h.groups}} for g in GROUPS},
            }
        }
        header = "# Generated by `nox -s sandbox -- up`; `nox -s sandbox -- down` removes it. Do not edit.\n"
        (self.inventory_dir / "hosts.yml").write_text(header + yaml.safe_dump(inventory, sort_keys=False))
        (self.inventory_dir / "group_vars" / "all.yml").write_text(
            header + yaml.safe_dump(self._group_vars(), sort_keys=False)
        )

    def _group_vars(self) -> dict[str, Any]:
        return {
            "ansible_host": "127.0.0.1",
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.key_path),
            # Ports are reused by fresh hosts with fresh host keys: no known_hosts for the sandbox. The
            # variable is for Mitogen's SSH transport, which reads it instead of the ssh arguments.
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "ansible_host_key_checking": False,
            "mlci_sandbox": True,
            # Containers share the machine's disk and memory; these are the sandbox's own minimums.
            "preflight_min_disk_gb": 2,
            "preflight_min_memory_mb": 512,
            "docker_daemon_json": {"log-driver": "json-file"},
            "docker_daemon_json_fragments": {"log_rotation": {"log-opts": {"max-size": "10m", "max-file": "3"}}},
            "ci_runner_repo_bundle": str(self.bundle_path),
            "ci_runner_repo_version": self.commit,
        }

    # --- locking -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One up/down at a time per project (tests and a user's shell may race)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def connect() -> Any:
    """A docker SDK client for the local engine, or SandboxError saying how to start one."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise SandboxError(
            f"no Docker engine answers ({exc}). Start one: as root `dockerd > /var/log/dockerd.log 2>&1 &` "
            "(or `systemctl start docker`); install it with `apt-get install docker.io`"
        ) from None
    return client


def _authorized_keys_tar(public_key: str) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        ssh = tarfile.TarInfo(".ssh")
        ssh.type, ssh.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(ssh)
        body = public_key.encode()
        keys = tarfile.TarInfo(".ssh/authorized_keys")
        keys.size, keys.mode = len(body), 0o600
        tar.addfile(keys, io.BytesIO(body))
    return data.getvalue()


def _site_trust_tar(cas: list[Path]) -> bytes:
    """The local CA files, and a pip.conf that makes pip use the system store (pip bundles its own)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        files = {f"usr/local/share/ca-certificates/{ca.name}": ca.read_bytes() for ca in cas}
        files["etc/pip.conf"] = b"[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    return data.getvalue()


def _git(root: Path, *args: str) -> str:
    run = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SandboxError(f"git {' '.join(args)} in {root} failed: {run.stderr.strip()}")
    return run.stdout


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _host_index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
