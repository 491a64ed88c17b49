"""Benchmarks of STEM inversion (not part of the test suite). Run: ``python -m bench.run_all [--quick]``.

Shared helpers: device/dtype parsing, synchronised wall-clock timing (median of warmed-up repeats) and
peak-memory measurement.

Peak memory
- CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call (bytes of tensors
  the call allocated on top of its inputs).
- CPU: the process's resident-set high-water mark (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``) minus the resident set before the call. The benchmarks run in child
  processes started with ``MALLOC_MMAP_THRESHOLD_=65536`` so every tensor above 64 KiB is its own mmap
  and is returned to the OS when freed: the high-water mark then follows the live tensors instead of
  glibc's cached heap. Labelled "RSS high-water (CPU)" in the tables.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results"
SHARED_VIDEOS = (REPO.parent / "shared" / "data" / "videos").resolve()

sys.path.insert(0, str(REPO / "scripts"))  # comfy_host: the one way to boot ComfyUI and import the pack
import comfy_host  # noqa: E402

comfy_host.import_pack()  # benchmark modules import the pack as comfyui_stem.stem_core...

# Environment of the benchmark child processes (see the module docstring).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def bench_args(doc: str, argv=None, extra=None):
    """The options every benchmark shares (--quick, --device, --dtype, --out); `extra(parser)` adds more.
    Returns (args, device, dtype, out folder)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    return args, device, resolve_dtype(args.dtype, device), Path(args.out)


def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
        return torch.device("cuda")
    if name != "cpu":
        raise SystemExit(f"--device must be cpu or cuda, got {name!r}")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise SystemExit(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------
# memory


def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: ``.peak_bytes`` = peak memory the block allocated above what was live before.

    ``.kind`` says how it was measured ("cuda max_memory_allocated", "RSS high-water (CPU)") or is None
    when the platform offers neither (then peak_bytes is None).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: Optional[int] = None
        self.kind: Optional[str] = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _proc_status_kb("VmRSS")
            self._ok = self._base is not None and _reset_rss_peak()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
            self.kind = "cuda max_memory_allocated"
        elif self._ok:
            hwm = _proc_status_kb("VmHWM")
            if hwm is not None:
                self.peak_bytes = max(0, hwm - self._base) * 1024
                self.kind = "RSS high-water (CPU)"
        return False


def boot_host(device: torch.device, dtype: torch.dtype) -> dict:
    """ComfyUI in-process with the pack loaded, set up for the device and dtype (PyTorch SDPA attention)."""
    options = {"use_pytorch_cross_attention": True}
    if dtype == torch.float16:
        options["force_fp16"] = True
    elif dtype == torch.bfloat16:
        options["bf16_unet"] = True
    return comfy_host.boot_in_process(cpu=device.type == "cpu", cli_args=options)


# ----------------------------------------------------------------------------------------------------
# output


def machine_info(device: torch.device, dtype: torch.dtype) -> dict:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))


def publish(out_dir: Path, name: str, payload: dict, tables: Callable[[dict], str]) -> dict:
    """Writes NAME.json and the NAME.md table into out_dir, prints the table, returns the payload."""
    write_json(out_dir / f"{name}.json", payload)
    text = tables(payload)
    (out_dir / f"{name}.md").write_text(text)
    print(text, flush=True)
    return payload


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB"


def fmt_s(t: Optional[float]) -> str:
    if t is None:
        return "n/a"
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    return f"{t * 1000:.1f} ms"


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
