"""A real ComfyUI server subprocess (pinned host or COMFYUI_DIR) with the pack, on a free
127.0.0.1 port, driven over HTTP and the websocket by scripts/run_workflow.py."""
import json
import shutil

import pytest

from tests.conftest import COMFYUI_DIR, REPO

import comfy_client as cc  # noqa: E402
import comfy_host  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The running server handle (.address); its input folder gets the test clips."""
    if not (COMFYUI_DIR / "main.py").exists():
        pytest.fail(f"no ComfyUI at {COMFYUI_DIR}; run `make setup` or set COMFYUI_DIR")
    log = tmp_path_factory.mktemp("server") / "comfyui.log"
    with comfy_host.start_server(str(COMFYUI_DIR), python=comfy_host.host_python(COMFYUI_DIR), port=0, cpu=True, log_path=str(log),
                         log=None) as handle:
        yield handle


@pytest.fixture(scope="session")
def server_input(server, clips):
    """put(name) copies a test clip into the server's input folder, under stem_test_clips/ (so nothing of a user's
    input folder is overwritten), and returns the name the loader takes."""
    folder = COMFYUI_DIR / "input" / "stem_test_clips"
    folder.mkdir(parents=True, exist_ok=True)
    done = set()

    def put(name):
        src, dst = clips / name, folder / name
        if name not in done:
            if dst.is_dir():
                shutil.rmtree(dst)
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
            done.add(name)
        return f"stem_test_clips/{name}"
    return put


def load_api(name):
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


@pytest.fixture
def run(server):
    """run(workflow, out_dir=None, timeout=600) -> queue_and_wait result."""
    def go(workflow, out_dir=None, timeout=600):
        return cc.queue_and_wait(server, workflow, timeout=timeout, out_dir=out_dir, log=None)
    return go


def skip_without_optional_nodes(known, workflow):
    """Skip (with the reason) a workflow that needs optional node packs the server lacks (VideoHelperSuite);
    ``known``: the server's /object_info class names; ``workflow``: UI or API format."""
    from build_workflows import optional_nodes
    missing = {cls: where for cls, where in optional_nodes(workflow).items() if cls not in known}
    if missing:
        pytest.skip(f"needs {sorted(set(missing.values()))}, not installed in this host: {sorted(missing)}")
