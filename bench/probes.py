"""Machine and card probes, in one place: cpu, RAM, card, driver and clocks (NVML through pynvml,
else nvidia-smi), whether CUDA is usable, the device copy bandwidth (the decode roofline) and NVML
utilisation.

``capture()`` returns exactly the keys of the results sidecar (see :mod:`reports`): card, driver,
clocks, cpu; ``write_sidecar`` writes it beside asv's machine.json. ``describe()`` adds what a
person wants next to a table (host, OS, RAM, Python and package versions, GPU memory). Versions come
from package metadata, so nothing heavy (torch, cupy) is imported here.

``UtilizationSampler`` polls NVML's GPU utilisation while a workload runs. Caveat, repeated wherever
the number is shown: NVML utilisation is the share of the sample period in which at least one
kernel was running on the card. It says that *a* kernel ran, not how many SMs it kept busy or how
close it came to the memory bandwidth: a single tiny kernel that is always running reads 100%.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

def cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def _nvml():
    """The pynvml module, initialised, or None."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml
    except Exception:  # not installed, no driver, no GPU
        return None


def _text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


def _gpu_nvml(index: int) -> dict | None:
    nv = _nvml()
    if nv is None:
        return None
    try:
        if index >= nv.nvmlDeviceGetCount():
            return None
        h = nv.nvmlDeviceGetHandleByIndex(index)
        info = {"card": _text(nv.nvmlDeviceGetName(h)), "driver": _text(nv.nvmlSystemGetDriverVersion()),
                "memory_total_bytes": int(nv.nvmlDeviceGetMemoryInfo(h).total), "source": "nvml"}
        clocks = {}
        for key, kind in (("sm", nv.NVML_CLOCK_SM), ("mem", nv.NVML_CLOCK_MEM)):
            try:
                clocks[key] = (nv.nvmlDeviceGetClockInfo(h, kind), nv.nvmlDeviceGetMaxClockInfo(h, kind))
            except Exception:
                pass
        info["clocks"] = _clock_text(clocks)
        try:
            cuda = nv.nvmlSystemGetCudaDriverVersion()
            info["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except Exception:
            pass
        return info
    except Exception:
        return None
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def _gpu_smi(index: int) -> dict | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,memory.total"
    try:
        out = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", str(index)],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    v = [x.strip() for x in out.stdout.strip().splitlines()[0].split(",")]
    if len(v) < 7:
        return None

    def num(x):
        try:
            return int(float(x))
        except ValueError:
            return None
    clocks = {"sm": (num(v[2]), num(v[3])), "mem": (num(v[4]), num(v[5]))}
    mem = num(v[6])
    return {"card": v[0], "driver": v[1], "clocks": _clock_text(clocks),
            "memory_total_bytes": mem * (1 << 20) if mem is not None else None, "source": "nvidia-smi"}


def _clock_text(clocks: dict) -> str | None:
    parts = []
    for key, (cur, mx) in clocks.items():
        if cur is None:
            continue
        parts.append(f"{key} {cur} MHz" + (f" (max {mx})" if mx and mx != cur else ""))
    return ", ".join(parts) or None


def gpu_info(index: int = 0) -> dict | None:
    """card, driver, clocks (current, with the maximum when lower), memory_total_bytes, source; None
    without an NVIDIA GPU. Clocks are read when this is called: call it right after a run."""
    return _gpu_nvml(index) or _gpu_smi(index)


def capture(index: int = 0) -> dict:
    """The sidecar record: {"card", "driver", "clocks", "cpu"} (None where unknown)."""
    gpu = gpu_info(index) or {}
    return {"card": gpu.get("card"), "driver": gpu.get("driver"), "clocks": gpu.get("clocks"), "cpu": cpu_name()}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def describe(index: int = 0) -> dict:
    """A fuller record for people: host, OS, cpu, RAM, Python, package versions and the GPU."""
    gpu = gpu_info(index)
    cupy = next((v for v in (_version(p) for p in ("cupy", "cupy-cuda13x", "cupy-cuda12x")) if v), None)
    return {"host": socket.gethostname(), "os": f"{platform.system()} {platform.release()}",
            "arch": platform.machine(), "cpu": cpu_name(), "num_cpu": os.cpu_count(), "ram_bytes": ram_bytes(),
            "python": platform.python_version(), "numpy": _version("numpy"), "torch": _version("torch"),
            "cupy": cupy, "gpu": gpu}


def write_sidecar(results_dir, machine: str, info: dict | None = None) -> tuple[Path, str | None]:
    """Write results/<machine>/taper-env.json; returns (path, warning). The warning is set when the
    sidecar already there names another card or driver: one sidecar describes every result of a
    machine directory, so such a box should get a new asv machine name."""
    from reports.results import SIDECAR, write_env_sidecar

    info = capture() if info is None else info
    path = Path(results_dir) / machine / SIDECAR
    warning = None
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        changed = [k for k in ("card", "driver") if old.get(k) and info.get(k) and old.get(k) != info.get(k)]
        if changed:
            warning = (f"{path}: {', '.join(f'{k} was {old[k]!r}, now {info[k]!r}' for k in changed)}; "
                       "earlier results of this machine directory will be shown with the new values; "
                       "give this box a new asv machine name (--machine) to keep them apart")
    return write_env_sidecar(results_dir, machine, **{k: info.get(k) for k in ("card", "driver", "clocks", "cpu")}), warning


def cuda_status() -> tuple[bool, str]:
    """(usable, why not): whether the engine or torch can run on a CUDA device here. Imports torch
    only when it is installed; the engine's reason names what is missing (cupy, a GPU, a driver)."""
    import engine.device

    if engine.device.is_available("cuda"):
        return True, ""
    cause = getattr(engine.device.backend("cuda"), "cause", None)
    why = [f"engine: {type(cause).__name__}: {cause}" if cause else "engine: the cuda backend did not load"]
    try:
        import torch
        if torch.cuda.is_available():
            return True, ""
        why.append(f"torch {torch.__version__}: torch.cuda.is_available() is False")
    except ImportError:
        why.append("torch: not installed")
    return False, "no usable CUDA device (" + "; ".join(why) + ")"


def copy_gb_per_s(device: str = "cuda") -> float | None:
    """Device-to-device copy rate, GB read + written per second: the decode roofline's ceiling. None
    off CUDA. The one measurement is the engine implementation's (impls/engine.py)."""
    if not str(device).startswith("cuda"):
        return None
    import impls
    return impls.get("engine", "cuda").copy_gb_per_s()


class UtilizationSampler:
    """Sample NVML GPU utilisation (percent) in a background thread while the block runs:

        with UtilizationSampler() as u:
            run_workload()
        u.mean  # None without NVML; read reports.claims.UTILIZATION_CAVEAT before quoting it
    """

    def __init__(self, index: int = 0, interval_s: float = 0.05):
        self.index, self.interval_s = index, interval_s
        self.samples: list[int] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = None
        self._nv = None

    def __enter__(self):
        self._nv = _nvml()
        if self._nv is None:
            self.error = "NVML is not available (pip install nvidia-ml-py, and an NVIDIA driver)"
            return self
        try:
            handle = self._nv.nvmlDeviceGetHandleByIndex(self.index)
        except Exception as e:
            self.error = f"NVML: {e}"
            return self

        def loop():
            while not self._stop.is_set():
                try:
                    self.samples.append(int(self._nv.nvmlDeviceGetUtilizationRates(handle).gpu))
                except Exception as e:  # keep what we have
                    self.error = f"NVML: {e}"
                    return
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="nvml-utilization", daemon=True)
        self._thread.start()
        time.sleep(0)  # let the first sample happen
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
        return False

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def emit_rows(path, rows: list, **meta) -> str:
    """What a GPU script reports: {"device": this card's name, **meta, "rows": rows} as JSON, printed and,
    when path is given, written there atomically. Returns the text."""
    import json
    info = gpu_info(0) or {}
    text = json.dumps({"device": info.get("card"), **meta, "rows": rows}, indent=2)
    if path:
        from engine.io.atomic import atomic_write_text
        atomic_write_text(path, text)
    print(text)
    return text
