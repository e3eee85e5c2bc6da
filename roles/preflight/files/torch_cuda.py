# Does the project's torch run CUDA on this host's driver? Run with the project's own interpreter
# (`<venv>/bin/python -c <this file>`); prints JSON {torch, torch_cuda, driver_cuda, device, problem}, where
# problem is "" when one small real CUDA op ran. Read-only. The functions are importable for tests.
import ctypes
import json


def driver_cuda():
    """The newest CUDA version the loaded driver runs ("12.8", the "CUDA Version" nvidia-smi shows), or None."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _major_minor(version):
    return tuple(int(part) for part in version.split(".")[:2])


def mismatch(torch_version, torch_cuda, driver):
    """Why this torch cannot run CUDA on this driver, from the versions alone ("" = nothing against it)."""
    if torch_cuda is None:
        return (
            f"torch {torch_version} is a CPU-only build: install a CUDA build of torch in the project environment "
            f"(one for CUDA {driver} or older)" if driver else
            f"torch {torch_version} is a CPU-only build and no NVIDIA driver answers (libcuda.so.1)"
        )  # fmt: skip
    if driver is None:
        return (
            f"torch {torch_version} is built for CUDA {torch_cuda} but no NVIDIA driver answers (libcuda.so.1 "
            "missing or failing): install the driver (nvidia_driver role) and reboot"
        )
    # CUDA runs a build of an older or equal major version (minor versions are compatible within a major
    # since CUDA 11); a newer major needs a newer driver.
    if _major_minor(torch_cuda)[0] > _major_minor(driver)[0]:
        return (
            f"torch {torch_version} is built for CUDA {torch_cuda} but the driver runs CUDA {driver} at most: "
            f"install a driver branch that supports CUDA {torch_cuda} (nvidia_driver_branch and "
            f"nvidia_driver_version), or a torch built for CUDA {driver} or older"
        )
    return ""


def check():
    out = {"torch": None, "torch_cuda": None, "driver_cuda": driver_cuda(), "device": None, "problem": ""}
    try:
        import torch
    except ImportError as exc:
        out["problem"] = f"the project environment has no torch ({exc})"
        return out
    out["torch"], out["torch_cuda"] = torch.__version__, torch.version.cuda
    out["problem"] = mismatch(torch.__version__, torch.version.cuda, out["driver_cuda"])
    if out["problem"]:
        return out
    try:  # one small real op: a driver that loads but cannot run this build's kernels fails here
        ones = torch.ones(1024, device="cuda")
        if int((ones @ ones).item()) != 1024:
            raise RuntimeError("a dot product on the GPU gave a wrong result")
        out["device"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # torch raises RuntimeError/AssertionError with CUDA's own words
        out["problem"] = (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) failed a CUDA op on the driver's CUDA "
            f"{out['driver_cuda']}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        )
    return out


if __name__ == "__main__":
    print(json.dumps(check()))
