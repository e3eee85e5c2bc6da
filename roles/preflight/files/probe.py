# Measures everything preflight decides on in one round trip and prints it as JSON. Read-only.
# Run as `python3 -c <this file> <disk path>`; the functions take the file system root so that tests can
# point them at a made-up /sys and /proc.
import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def pci_gpus(root="/"):
    """PCI addresses of NVIDIA display devices (vendor 0x10de, class 0x03xxxx)."""
    gpus = []
    for dev in sorted(glob.glob(os.path.join(root, "sys/bus/pci/devices/*"))):
        if read(dev + "/vendor") == "0x10de" and read(dev + "/class").startswith("0x03"):
            gpus.append(os.path.basename(dev))
    return gpus


def kernel_driver(root="/"):
    """The loaded NVIDIA kernel module's version and the GPU models it reports, from /sys and /proc."""
    version = read(os.path.join(root, "sys/module/nvidia/version"))
    if not version:
        # "NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  580.159.04  Release Build ..."
        match = re.search(
            r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", read(os.path.join(root, "proc/driver/nvidia/version"))
        )
        version = match.group(1) if match else ""
    models = []
    for info in sorted(glob.glob(os.path.join(root, "proc/driver/nvidia/gpus/*/information"))):
        match = re.search(r"^Model:\s*(.+)$", read(info), re.MULTILINE)
        if match:
            models.append(match.group(1).strip())
    return version or None, models


def nvidia_smi():
    """GPU models and driver version from nvidia-smi, where /proc says nothing (a sandboxed kernel)."""
    if not shutil.which("nvidia-smi"):
        return None, []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, []
    rows = [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if "," in line]
    return (rows[0][1] if rows else None), [row[0] for row in rows]


def cuda_driver_version():
    """The newest CUDA version the installed driver runs ("13.0"), asked from libcuda itself."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def cuda_toolkit_version(root="/"):
    """The CUDA toolkit of nvcc on the PATH, else of /usr/local/cuda: "13.0.88", or None."""
    nvcc = (shutil.which("nvcc") if root == "/" else None) or os.path.join(root, "usr/local/cuda/bin/nvcc")
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    try:
        return json.loads(read(os.path.join(home, "version.json")))["cuda"]["version"]
    except (ValueError, KeyError, TypeError):
        pass
    if root != "/" or not os.access(nvcc, os.X_OK):
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "Cuda compilation tools, release 12.4, V12.4.131"
    match = re.search(r"release [\d.]+, V(\d+(?:\.\d+)+)", out)
    return match.group(1) if match else None


def secure_boot(root="/"):
    """True or False from the EFI variable; None on a machine booted without EFI."""
    found = glob.glob(os.path.join(root, "sys/firmware/efi/efivars/SecureBoot-*"))
    if not found:
        return None
    try:
        with open(found[0], "rb") as f:
            return f.read()[-1] == 1
    except (OSError, IndexError):
        return None


def listening_ports():
    """Listening TCP ports -> the process holding each (process names need root; else "?")."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in read(table).splitlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A":
                inodes[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    owners = {}
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            pid = fd.split("/")[2]
            owners.setdefault(inodes[target[8:-1]], read(f"/proc/{pid}/comm"))
    return {str(port): owners.get(port, "?") for port in sorted(set(inodes.values()))}


def probe(disk_path, root="/"):
    out = {"kernel": os.uname().release}
    st = os.statvfs(disk_path)
    out["disk_free_gb"] = round(st.f_bavail * st.f_frsize / 2**30, 1)
    meminfo = dict(line.split(":", 1) for line in read(os.path.join(root, "proc/meminfo")).splitlines())
    out["memory_mb"] = int(meminfo["MemTotal"].split()[0]) // 1024
    out["gpus"] = pci_gpus(root)
    out["nvidia_loaded"] = os.path.isdir(os.path.join(root, "sys/module/nvidia"))
    driver, models = kernel_driver(root)
    # nvidia-smi (a process) only where a driver may be there but /sys and /proc did not name it all, as
    # under a sandboxed kernel that shows the device nodes but no PCI bus.
    maybe_nvidia = out["gpus"] or out["nvidia_loaded"] or os.path.exists(os.path.join(root, "dev/nvidiactl"))
    if root == "/" and maybe_nvidia and (not driver or len(models) < len(out["gpus"])):
        smi_driver, smi_models = nvidia_smi()
        driver = driver or smi_driver
        if len(smi_models) > len(models):
            models = smi_models
    out["gpu_models"] = models
    out["gpu_count"] = max(len(out["gpus"]), len(models))
    out["driver_version"] = driver
    out["cuda_driver_version"] = cuda_driver_version() if driver and root == "/" else None
    out["cuda_toolkit_version"] = cuda_toolkit_version(root)
    out["kernel_headers"] = os.path.isdir(os.path.join(root, f"lib/modules/{out['kernel']}/build"))
    out["secure_boot"] = secure_boot(root)
    out["listening"] = listening_ports() if root == "/" else {}
    return out


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
