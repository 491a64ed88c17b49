"""The one place that starts a ComfyUI host: as a server subprocess (``start_server``, for the runner,
the demo and the end-to-end tests) or in this process (``boot_in_process``, for node tests, the
benchmarks and the workflow generator). Standard library only until ComfyUI itself is imported.

``import_pack()`` is the one way tests, benchmarks and scripts import this pack: as the package
``comfyui_stem`` (its name in ComfyUI's custom_nodes, where `make setup` links it), so that
``from comfyui_stem.stem_core.em import estimate_bases`` works with or without ComfyUI and, on the
pinned host, in-process ComfyUI and the tests share one copy of every module.

``host_python(comfyui_dir)`` finds the interpreter a user's ComfyUI runs with: ``$PYTHON``, else a
virtualenv inside or beside the ComfyUI folder (venv/, .venv/, ../python_embeded), else this one.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
PINNED_HOST = REPO / ".host" / "ComfyUI"
PACK_LINK_NAME = "comfyui_stem"


def import_pack():
    """The pack as the package ``comfyui_stem`` (imported from this checkout once; ComfyUI's own loading of
    custom_nodes/comfyui_stem later reuses its submodules)."""
    import importlib
    import importlib.util
    try:
        return importlib.import_module(PACK_LINK_NAME)
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location(PACK_LINK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_LINK_NAME] = module  # the standard importlib recipe: register before executing
    spec.loader.exec_module(module)
    return module


class HostError(RuntimeError):
    """ComfyUI could not be started or the pack could not be loaded into it (the message says why)."""


def default_comfyui_dir() -> Path:
    """The ComfyUI folder in use: $COMFYUI_DIR, else the pinned copy that `make setup` builds."""
    return Path(os.environ.get("COMFYUI_DIR") or PINNED_HOST).resolve()


def host_python(root: Path) -> str:
    """The interpreter that runs this ComfyUI: $PYTHON, a venv inside or beside it, else this one."""
    if os.environ.get("PYTHON"):
        return os.environ["PYTHON"]
    comfy = Path(root).resolve()
    if comfy == PINNED_HOST.resolve():
        return sys.executable
    for candidate in (comfy / "venv" / "bin" / "python", comfy / ".venv" / "bin" / "python",
                      comfy.parent / "python_embeded" / "python.exe", comfy.parent / "venv" / "bin" / "python"):
        if candidate.exists():
            return str(candidate)
    return sys.executable


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Terminate a child process, killing it if it does not exit within `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (tiny race window before ComfyUI binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# glibc hands every large block (an activation tensor of a long clip) straight back to the kernel and gets it again
# on the next UNet call: on 120 frames of 512x512 that was 29% of the CPU time in the kernel and 33 M page faults.
# Keeping freed memory in the process brings it to 1% (bench/README.md, long_clip). Set for the servers this module
# starts; STEM_MALLOC_TUNING=0 leaves the environment alone.
MALLOC_TUNING = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36), "MALLOC_TOP_PAD_": str(1 << 28)}


def server_environment() -> dict:
    env = dict(os.environ)
    if env.get("STEM_MALLOC_TUNING", "1") != "0":
        for key, value in MALLOC_TUNING.items():
            env.setdefault(key, value)
    return env


class ServerHandle:
    """A ComfyUI started by ``start_server``: ``address`` ("127.0.0.1:PORT"), ``process``, ``log_path``."""

    def __init__(self, address: str, process: subprocess.Popen, log_path: str):
        self.address = address
        self.process = process
        self.log_path = log_path

    def __str__(self) -> str:
        return self.address

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def start_server(comfyui_dir: str, python: Optional[str] = None, port: int = 0, cpu: bool = False,
                 extra_args: Sequence[str] = (), timeout: float = 300.0, log_path: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = print):
    """Run ``main.py --listen 127.0.0.1 --port P --disable-auto-launch [--cpu] [extra_args]`` from
    ``comfyui_dir``, wait until it answers GET /system_stats, yield a ServerHandle, stop it on exit.

    port 0 picks a free port. The server's output goes to ``log_path`` (default: a temporary file,
    removed after a clean run, kept and named in error messages otherwise). Raises HostError if it exits or does not answer in
    ``timeout`` seconds."""
    main_py = os.path.join(comfyui_dir, "main.py")
    if not os.path.isfile(main_py):
        raise HostError(f"--start: {main_py} not found; point it at a ComfyUI folder")
    port = int(port) or free_port()
    address = f"127.0.0.1:{port}"
    cmd = [python or sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch"]
    if cpu:
        cmd.append("--cpu")
    cmd.extend(extra_args)
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix="comfyui-", suffix=".log")
        os.close(fd)
    if log:
        log(f"starting ComfyUI: {' '.join(shlex.quote(c) for c in cmd)} (in {comfyui_dir}; log {log_path})")
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=comfyui_dir, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=server_environment())
    handle = ServerHandle(address, proc, log_path)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise HostError(f"ComfyUI exited with status {proc.returncode} while starting; "
                                f"last lines of {log_path}:\n{handle.log_tail()}")
            if _answers(f"http://{address}/system_stats"):
                break
            if time.monotonic() - t0 > timeout:
                raise HostError(f"ComfyUI did not answer on {address} within {timeout:g} s; "
                                f"last lines of {log_path}:\n{handle.log_tail()}")
            time.sleep(0.5)
        if log:
            log(f"ComfyUI is up on {address} after {time.monotonic() - t0:.1f} s")
        yield handle
    except BaseException:
        own_log = False  # keep the log of a failed run for the user to read
        raise
    finally:
        stop_process(proc)
        log_file.close()
        if own_log:
            with contextlib.suppress(OSError):
                os.remove(log_path)


_BOOTED = {}
# comfy_extras files the pack's workflows and tests use (SVD nodes, masks, image and checkpoint-save nodes)
EXTRAS = ("nodes_video_model.py", "nodes_mask.py", "nodes_images.py", "nodes_model_merging.py")


def _load_node_module(comfy_nodes, path: Path):
    loaded = comfy_nodes.load_custom_node(str(path))
    if inspect.iscoroutine(loaded):  # ComfyUI 2025+: load_custom_node is async
        loaded = asyncio.run(loaded)
    return loaded


def boot_in_process(root: Optional[Path] = None, cpu: bool = True, cli_args: Optional[dict] = None) -> dict:
    """Import ComfyUI from ``root`` into this process on the CPU, load the comfy_extras nodes in EXTRAS
    and the pack the way ComfyUI loads custom nodes (from its custom_nodes link when there is one).
    Idempotent. ``cpu`` and ``cli_args`` (ComfyUI command-line options by attribute name, e.g.
    {"force_fp16": True}) take effect before comfy.model_management is imported.

    Returns {"nodes": ComfyUI's nodes module, "folder_paths": ..., "pack": the pack's module,
    "mappings": ComfyUI's NODE_CLASS_MAPPINGS}."""
    if _BOOTED:
        return _BOOTED
    root = Path(root or default_comfyui_dir()).resolve()
    if not (root / "main.py").exists():
        raise HostError(f"no ComfyUI at {root}; run `make setup` or set COMFYUI_DIR")
    # ComfyUI's own modules (nodes.py, folder_paths.py, comfy/) are imported by their top-level names.
    sys.path.insert(0, str(root))
    import comfy.cli_args
    comfy.cli_args.args.cpu = cpu  # must be set before comfy.model_management is imported
    for name, value in (cli_args or {}).items():
        setattr(comfy.cli_args.args, name, value)
    import comfy.model_management  # noqa: F401
    import folder_paths
    import nodes as comfy_nodes
    for name in EXTRAS:
        if (root / "comfy_extras" / name).exists():
            _load_node_module(comfy_nodes, root / "comfy_extras" / name)
    link = root / "custom_nodes" / PACK_LINK_NAME
    pack_path = link if link.exists() else REPO
    if _load_node_module(comfy_nodes, pack_path) is False:
        raise HostError(f"ComfyUI failed to load the pack from {pack_path}")
    # the pinned host keys the module by folder name, current ones by the full path with "." -> "_x_"
    pack = sys.modules.get(pack_path.name) or sys.modules.get(str(pack_path).replace(".", "_x_"))
    _BOOTED.update(nodes=comfy_nodes, folder_paths=folder_paths, pack=pack, mappings=comfy_nodes.NODE_CLASS_MAPPINGS,
                   comfyui_dir=root)
    return _BOOTED
