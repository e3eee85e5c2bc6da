# Measures everything preflight decides on in one round trip and prints it as JSON. Read-only.
import glob
import json
import os
import sys

path = sys.argv[1]
out = {"kernel": os.uname().release}
st = os.statvfs(path)
out["disk_free_gb"] = round(st.f_bavail * st.f_frsize / 2**30, 1)
with open("/proc/meminfo") as f:
    meminfo = dict(line.split(":", 1) for line in f)
out["memory_mb"] = int(meminfo["MemTotal"].split()[0]) // 1024


def read(p):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return ""


gpus = []
for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
    if read(dev + "/vendor") == "0x10de" and read(dev + "/class").startswith("0x03"):
        gpus.append(os.path.basename(dev))
out["gpus"] = gpus
out["nvidia_loaded"] = os.path.isdir("/sys/module/nvidia")
out["kernel_headers"] = os.path.isdir(f"/lib/modules/{out['kernel']}/build")
sb = glob.glob("/sys/firmware/efi/efivars/SecureBoot-*")
secure_boot = None
if sb:
    try:
        with open(sb[0], "rb") as f:
            secure_boot = f.read()[-1] == 1
    except OSError:
        pass
out["secure_boot"] = secure_boot

# Listening TCP sockets -> port and the process holding it (process names need root; else "?").
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
out["listening"] = {str(port): owners.get(port, "?") for port in sorted(set(inodes.values()))}
print(json.dumps(out))
