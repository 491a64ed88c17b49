"""In-process ComfyUI host for node-level tests (the real ComfyUI, CPU only).

The host directory goes first on sys.path so `import nodes` is ComfyUI's nodes.py, not this pack's
nodes/ package; the pack is then loaded the way ComfyUI loads custom nodes.
"""
import asyncio
import inspect
import shutil
import sys

import pytest

from tests.conftest import COMFYUI_DIR, REPO

_HOST = {}


def _boot_host():
    if _HOST:
        return _HOST
    if not (COMFYUI_DIR / "main.py").exists():
        pytest.fail(f"no ComfyUI at {COMFYUI_DIR}; run `make setup` or set COMFYUI_DIR")
    sys.path.insert(0, str(COMFYUI_DIR))
    if "nodes" in sys.modules and not hasattr(sys.modules["nodes"], "NODE_CLASS_MAPPINGS"):
        del sys.modules["nodes"]  # this pack's nodes/ package shadowed ComfyUI's module
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management  # noqa: F401
    import folder_paths
    import nodes as comfy_nodes

    pack_link = COMFYUI_DIR / "custom_nodes" / "ComfyUI-STEM"
    pack_path = pack_link if pack_link.exists() else REPO
    loaded = comfy_nodes.load_custom_node(str(pack_path))
    if inspect.iscoroutine(loaded):  # ComfyUI 2025+: load_custom_node is async
        loaded = asyncio.run(loaded)
    if loaded is False:
        pytest.fail(f"ComfyUI failed to load the pack from {pack_path}")
    # old hosts key the module by folder name, new ones by the full path with "." -> "_x_"
    module = sys.modules.get(pack_path.name) or sys.modules[str(pack_path).replace(".", "_x_")]
    _HOST.update(nodes=comfy_nodes, folder_paths=folder_paths, pack_module=module)
    return _HOST


@pytest.fixture(scope="session")
def comfy_host():
    """dict with ComfyUI's `nodes` and `folder_paths` modules, the pack registered."""
    return _boot_host()


@pytest.fixture
def node(comfy_host):
    """node("STEMInvert") -> a fresh instance of the registered node class."""
    def make(name):
        return comfy_host["nodes"].NODE_CLASS_MAPPINGS[name]()
    return make


@pytest.fixture
def input_dir(comfy_host, tmp_path):
    """A fresh ComfyUI input folder for one test."""
    fp = comfy_host["folder_paths"]
    old = fp.get_input_directory()
    d = tmp_path / "input"
    d.mkdir()
    fp.set_input_directory(str(d))
    yield d
    fp.set_input_directory(old)


@pytest.fixture
def input_with_clip(input_dir, shared_videos):
    """Copy a shared clip into the test's input folder (copied into tmp only, never the repo)."""
    def put(name):
        src = shared_videos / name
        dst = input_dir / name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst
    return put


@pytest.fixture(scope="session")
def tiny(comfy_host):
    """(model, clip, vae) of the tiny seeded test model, built once per session."""
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMTinyTestModel"]
    model, clip, vae, _ = cls().build(seed=0, model_channels=32)
    return model, clip, vae
