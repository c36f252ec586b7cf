"""Shared bench utilities: timing (device events on CUDA), peak extra memory, copy bandwidth, tables and JSON."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager

import torch


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cpu": _cpu_name(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from smtpo_fast.ops import backends
        info["smtpo_backends"] = backends()
    except Exception as exc:  # the bench still runs the baselines
        info["smtpo_backends"] = f"unavailable: {exc}"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, *, reps: int, warmup: int = 1, setup=None) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs; ``setup()`` (untimed) runs before each."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if setup:
            setup()
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _read_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM (the peak resident set) to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_extra_memory(device: torch.device):
    """Yields a dict whose 'bytes' is, afterwards, the peak memory above what was in use at entry.

    CUDA: torch.cuda.max_memory_allocated. CPU: the process's peak resident set (VmHWM, reset through
    /proc/self/clear_refs) minus its resident set at entry; large torch CPU buffers are mmapped by malloc and
    returned to the system when freed, so this sees each variant's own temporaries.
    """
    out = {"bytes": None, "method": None}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out["bytes"] = torch.cuda.max_memory_allocated(device) - base
        out["method"] = "torch.cuda.max_memory_allocated"
        return
    ok = _reset_peak_rss()
    base = _read_status("VmRSS")
    yield out
    peak = _read_status("VmHWM")
    if ok and base is not None and peak is not None:
        out["bytes"] = max(0, peak - base)
        out["method"] = "VmHWM - VmRSS (clear_refs reset)"


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, reps=10 if device.type == "cuda" else 5, warmup=2)
    return 2 * n * 4 / t


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]):
    """columns: (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            line.append("-" if v is None else (fmt.format(v) if fmt else str(v)))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for i, c in enumerate(cells):
        print("  ".join(s.rjust(w) for s, w in zip(c, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | None, payload: dict):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)
    print(f"wrote {path}")
