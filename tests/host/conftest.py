"""In-process ComfyUI host for node-level tests (the real ComfyUI, CPU only), booted by
scripts/comfy_host.py the same way the benchmarks and the workflow generator boot it."""
import shutil

import pytest

from tests.conftest import COMFYUI_DIR

import comfy_host as host_boot  # noqa: E402


def _boot_host():
    try:
        booted = host_boot.boot_in_process(COMFYUI_DIR)
    except host_boot.HostError as e:
        pytest.fail(str(e))
    return booted


@pytest.fixture(scope="session")
def comfy_host():
    """dict with ComfyUI's `nodes` and `folder_paths` modules, the pack registered."""
    return _boot_host()


@pytest.fixture(scope="session")
def glue(comfy_host):
    """glue("host") -> the pack's nodes/host.py module as ComfyUI loaded it (node modules exist only once
    ComfyUI is booted)."""
    import importlib
    return lambda name: importlib.import_module(f"{comfy_host['pack'].__name__}.nodes.{name}")


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
def input_with_clip(input_dir, clips):
    """Copy a shared clip into the test's input folder (copied into tmp only, never the repo)."""
    def put(name):
        src = clips / name
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
