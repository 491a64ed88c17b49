"""End to end through a real ComfyUI server: /object_info, /prompt, the websocket, outputs."""
import json
import math

import pytest

from tests.e2e.conftest import load_api

import comfy_client as cc  # noqa: E402

OUR_NODES = {"STEMVideoLoad", "STEMBasisEstimate", "STEMInvert", "STEMReconstruct", "STEMVideoMetrics",
             "STEMSaveVideo", "STEMTinyTestModel", "STEMTokenFlowEdit", "STEMAttentionStore", "STEMFateZeroEdit",
             "STEMVideoshopConditioning", "STEMVideoshopInvert", "STEMVideoshopEdit", "STEMMatchLatentStatistics",
             "STEMVideoshopSeamReport", "STEMTinySVDModel"}


def small(workflow, video, frames=6, size=64, steps=4):
    """A shipped workflow on the tiny test model (swapped in by the runner's overrides), shrunk so it runs in
    seconds on the CI's 2 cores (inversion and edits keep matching step counts)."""
    workflow = cc.apply_overrides(workflow, cc.Overrides(tiny_model=True, video=video, frames=frames,
                                                         size=(size, size), steps=steps))
    for node in workflow.values():
        if node["class_type"] == "STEMBasisEstimate":
            node["inputs"]["num_bases"] = 32
    return workflow


def test_object_info_lists_every_node(server):
    info = json.loads(cc._http("GET", f"http://{server.address}/object_info")[1])
    missing = OUR_NODES - set(info)
    assert not missing, f"nodes missing from /object_info: {missing}"
    assert all(info[k]["category"].startswith("STEM video editing") for k in OUR_NODES)


def test_reconstruction_workflow_end_to_end(server, server_input, run, tmp_path):
    wf = small(load_api("stem_reconstruction"), server_input("wolf.mp4"))
    result = run(wf, out_dir=str(tmp_path))
    names = [p.rsplit("/", 1)[-1] for p in result["downloaded"]]
    assert any(n.endswith(".mp4") for n in names) and any(n.endswith(".json") for n in names)
    reports = [json.loads(open(p).read()) for p in result["downloaded"] if p.endswith(".json")]
    recon = next(r for r in reports if "STEM reconstruction" in json.dumps(r))
    for metric in ("psnr", "ssim", "warp_error"):
        values = recon["metrics"][metric]["per_frame"] if "metrics" in recon else recon[metric]["per_frame"]
        assert values and all(v is not None and math.isfinite(v) for v in values), metric
    assert any("TINY RANDOM TEST MODEL" in t for _, t in result["texts"])


def test_bad_prompt_is_refused_cleanly_and_server_keeps_serving(server, server_input, run):
    wf = small(load_api("stem_reconstruction"), server_input("wolf.mp4"))
    bad = json.loads(json.dumps(wf))
    for node in bad.values():
        if node["class_type"] == "STEMVideoLoad":
            node["inputs"]["video"] = "../../etc/passwd"
    with pytest.raises(cc.PromptRejected) as err:
        run(bad)
    assert "outside" in str(err.value) and "input folder" in str(err.value)

    failing = json.loads(json.dumps(wf))  # passes validation, fails while executing
    for node in failing.values():
        if node["class_type"] == "STEMVideoLoad":
            node["inputs"]["skip_first_frames"] = 500
    with pytest.raises(cc.ExecutionFailed) as err:
        run(failing)
    assert "frames" in str(err.value) and "Traceback" not in str(err.value).splitlines()[0]

    assert run(wf)["files"], "the server must keep serving after bad prompts"


def test_4k_clip_is_refused_with_figures_and_the_server_keeps_serving(server, server_input, run, clip_4k):
    """300 frames of 3840x2160 through the real server: the loader refuses before decoding the clip, saying what
    it would need, what is free and what fits; the next prompt runs."""
    import shutil
    from tests.conftest import COMFYUI_DIR
    shutil.copy(clip_4k, COMFYUI_DIR / "input" / "stem_test_clips" / "clip_4k.mp4")
    wf = small(load_api("stem_reconstruction"), "stem_test_clips/clip_4k.mp4")
    for node in wf.values():
        if node["class_type"] == "STEMVideoLoad":
            node["inputs"].update(frame_load_cap=0, custom_width=0, custom_height=0)
    with pytest.raises(cc.ExecutionFailed) as err:
        run(wf)
    text = str(err.value).splitlines()[0]
    assert "MemoryBudgetError" in text and "300 frames of 3840x2160 need" in text and "frame_load_cap <=" in text, text
    assert run(small(load_api("stem_reconstruction"), server_input("wolf.mp4")))["files"]
