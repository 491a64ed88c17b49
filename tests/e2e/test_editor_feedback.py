"""What the editor shows while and after a workflow runs, through the real server and its websocket: progress
per step (1..max) on the inversion and edit nodes, latent preview images per step with --preview-method auto, a
re-queued unchanged workflow served entirely from ComfyUI's cache (no node runs), and a touched video file making
the loader run again (IS_CHANGED = mtime + size)."""
import os
import shutil

import pytest

from tests.conftest import COMFYUI_DIR
from tests.e2e.conftest import load_api
from tests.e2e.test_reconstruction_server import small

STEPS = 3


def _by_node(progress, node):
    return [(value, maximum) for nid, value, maximum in progress if nid == node]


def _node(wf, class_type):
    return next(k for k, n in wf.items() if n["class_type"] == class_type)


@pytest.fixture
def private_clip(clips):
    """A clip under a name no other test queues (so the cache holds only this test's prompts)."""
    path = COMFYUI_DIR / "input" / "stem_feedback_probe.mp4"
    shutil.copy(clips / "wolf.mp4", path)
    yield path
    path.unlink(missing_ok=True)


def _assert_steps(result, wf, class_type, steps):
    node = _node(wf, class_type)
    seen = _by_node(result["progress"], node)
    assert seen == [(i, steps) for i in range(1, steps + 1)], f"{class_type} (node {node}) progress: {seen}"


def test_tokenflow_progress_cache_and_touch(run, private_clip):
    wf = small(load_api("tokenflow_stem"), private_clip.name, frames=4, size=64, steps=STEPS)
    wf[_node(wf, "STEMBasisEstimate")]["inputs"]["seed"] = 7171  # unlike any other test's prompt

    first = run(wf, timeout=300)
    # the model and prompt nodes may come from the cache of an earlier test's prompt; everything the clip feeds runs
    assert set(first["ran"]) | set(first["cached"]) == set(wf), (first["ran"], first["cached"])
    fed_by_clip = {_node(wf, c) for c in ("STEMVideoLoad", "STEMInvert", "STEMTokenFlowEdit", "STEMSaveVideo")}
    assert fed_by_clip <= set(first["ran"]), f"first run executed only {sorted(first['ran'])}"
    _assert_steps(first, wf, "STEMInvert", STEPS)
    _assert_steps(first, wf, "STEMTokenFlowEdit", STEPS)

    again = run(wf, timeout=120)
    assert again["ran"] == [], f"an unchanged workflow ran {again['ran']} again"
    assert set(again["cached"]) == set(wf), f"cached {sorted(again['cached'])} of {sorted(wf)}"
    assert again["progress"] == []

    st = private_clip.stat()
    os.utime(private_clip, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # touched, same bytes
    touched = run(wf, timeout=300)
    assert {_node(wf, "STEMVideoLoad"), _node(wf, "STEMInvert")} <= set(touched["ran"]), touched["ran"]
    print(f"tokenflow: first run {first['elapsed_s']:.1f} s ({len(first['ran'])} nodes), re-queue "
          f"{again['elapsed_s']:.2f} s (cached {len(again['cached'])} nodes, ran {len(again['ran'])}), after touch "
          f"{touched['elapsed_s']:.1f} s ran {sorted(touched['ran'])}")


def test_fatezero_progress(run, server_input):
    wf = small(load_api("fatezero_stem"), server_input("wolf.mp4"), frames=4, size=64, steps=STEPS)
    result = run(wf, timeout=300)
    _assert_steps(result, wf, "STEMInvert", STEPS)
    _assert_steps(result, wf, "STEMFateZeroEdit", STEPS)


@pytest.fixture(scope="module")
def preview_server(tmp_path_factory):
    """A second server started as users start it for previews: `--preview-method auto` (latent2rgb here: no TAESD
    decoder is installed)."""
    import comfy_host
    log = tmp_path_factory.mktemp("preview_server") / "comfyui.log"
    with comfy_host.start_server(str(COMFYUI_DIR), python=comfy_host.host_python(COMFYUI_DIR), port=0, cpu=True,
                                 extra_args=["--preview-method", "auto"], log_path=str(log), log=None) as handle:
        yield handle


def test_previews_on_the_websocket(preview_server, server_input):
    """With --preview-method auto the inversion and the edit send one binary preview image per step, shown on the
    running node, as core samplers do."""
    import comfy_client as cc
    wf = small(load_api("tokenflow_stem"), server_input("wolf.mp4"), frames=4, size=64, steps=STEPS)
    wf[_node(wf, "STEMBasisEstimate")]["inputs"]["seed"] = 7272
    result = cc.queue_and_wait(preview_server, wf, timeout=300, log=None)
    for class_type in ("STEMInvert", "STEMTokenFlowEdit"):
        node = _node(wf, class_type)
        assert result["previews"].get(node) == STEPS, f"{class_type}: previews {result['previews']}"
    print(f"previews per node: {result['previews']}")
