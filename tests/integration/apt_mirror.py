"""A signed apt repository built on the fly from stand-in packages, and the play that serves it on a sandbox
host's loopback: what the GPU-role and Docker-repository tests install from instead of upstream sites."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path


def stand_in_deb(out: Path, name: str, version: str, files: dict[str, str], depends: str = "") -> Path:
    """A .deb in `out` holding `files` (text, mode 0755) and nothing else: a package in name only."""
    root = out / "build" / f"{name}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: mlci tests <t@mlci.invalid>\n"
    control += f"Depends: {depends}\n" if depends else ""
    (root / "DEBIAN/control").write_text(control + f"Description: stand-in for {name} (mlci tests)\n")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    deb = out / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True, capture_output=True
    )
    return deb


def packages_index(debs: list[Path], base: Path) -> str:
    stanzas = []
    for deb in debs:
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True)
        data = deb.read_bytes()
        stanzas.append(
            control.stdout.strip()
            + f"\nFilename: {deb.relative_to(base)}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    return "\n".join(stanzas)


def release(directory: Path, files: list[Path], gnupghome: Path, fields: str) -> None:
    lines = [
        f"{hashlib.sha256(f.read_bytes()).hexdigest()} {f.stat().st_size} {f.relative_to(directory)}" for f in files
    ]
    release = directory / "Release"
    release.write_text(f"{fields}Date: {formatdate(usegmt=True)}\nSHA256:\n" + "".join(f" {x}\n" for x in lines))
    subprocess.run(
        ["gpg", "--batch", "--yes", "--clearsign", "-o", str(directory / "InRelease"), str(release)],
        check=True,
        capture_output=True,
        env={**os.environ, "GNUPGHOME": str(gnupghome)},
    )


def flat_repo(directory: Path, debs_of: list[tuple[str, str, dict[str, str]]], gnupghome: Path) -> None:
    directory.mkdir(parents=True)
    debs = [stand_in_deb(directory, name, version, files) for name, version, files in debs_of]
    (directory / "Packages").write_text(packages_index(debs, directory))
    release(directory, [directory / "Packages"], gnupghome, "Origin: mlci tests\n")


@contextlib.contextmanager
def gnupg_home() -> Iterator[Path]:
    """A throwaway keyring (short path: gpg-agent's socket lives in it); its agent is stopped after."""
    home = Path(tempfile.mkdtemp(prefix="mlci-gpg-"))
    try:
        yield home
    finally:
        subprocess.run(
            ["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False, capture_output=True
        )
        shutil.rmtree(home, ignore_errors=True)


def signing_key(gnupghome: Path, name: str) -> bytes:
    """A new signing key in `gnupghome` (the one `release` signs with); its armored public part."""
    env = {**os.environ, "GNUPGHOME": str(gnupghome)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", name, "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
        env=env,
    )
    return subprocess.run(["gpg", "--armor", "--export", name], check=True, capture_output=True, env=env).stdout


# Play: copy a mirror tree to `target` and serve it on 127.0.0.1:`port` as a transient unit.
SERVE_MIRROR = """
- name: Serve the test mirror on the runner's loopback
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Copy the mirror to the host
      ansible.builtin.copy:
        src: "{{ mirror_dir }}/"
        dest: /srv/mlci-test-mirror/
        mode: preserve
    - name: Stop a mirror an interrupted run left behind
      ansible.builtin.command: systemctl stop mlci-test-mirror
      changed_when: false
      failed_when: false
    - name: Serve it over HTTP on 127.0.0.1 as a transient unit
      ansible.builtin.command: >-
        systemd-run --unit=mlci-test-mirror --collect python3 -m http.server {{ port }} --bind 127.0.0.1
        --directory /srv/mlci-test-mirror
      changed_when: true
    - name: Wait for the mirror
      ansible.builtin.wait_for:
        host: 127.0.0.1
        port: "{{ port }}"
        timeout: 30
"""

# SERVE_MIRROR undone, with what the GPU roles installed from it: the holds released, the stand-in packages
# (`packages`) purged, the mirror, the roles' sources, pins and keys and the test's own `extra_paths` removed.
UNSERVE_MIRROR = """
- name: Take the test mirror and the stand-in packages off the hosts
  hosts: "{{ target }}"
  gather_facts: false
  tasks:
    - name: Stop the mirror
      ansible.builtin.command: systemctl stop mlci-test-mirror
      changed_when: true
      failed_when: false
    - name: Release the holds
      ansible.builtin.dpkg_selections:
        name: "{{ item }}"
        selection: install
      loop: "{{ held }}"
      failed_when: false
    - name: Remove the stand-in packages
      ansible.builtin.apt:
        name: "{{ packages }}"
        state: absent
        purge: true
    - name: Remove the mirror, the rendered sources, pins and keys, and the test's own files
      ansible.builtin.shell: >-
        rm -rf /srv/mlci-test-mirror /etc/apt/sources.list.d/mlci-nvidia* /etc/apt/preferences.d/mlci-*
        /etc/apt/keyrings/mlci-nvidia* {{ extra_paths | default([]) | join(' ') }}
      changed_when: true
    - name: Refresh the apt cache without the mirror
      ansible.builtin.apt:
        update_cache: true
"""
