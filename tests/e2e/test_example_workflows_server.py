"""The example workflows against a running host: each one's nodes and widgets as the server's /object_info
describes them, the Templates route of hosts that have it (ComfyUI >= 0.3.12; the pinned 2024-03 host has none),
and the VideoHelperSuite variant end to end when VideoHelperSuite is installed."""
import json
import shutil

import pytest

from tests.conftest import COMFYUI_DIR, REPO
from tests.e2e.conftest import skip_without_optional_nodes
from tests.e2e.test_reconstruction_server import small

import comfy_client as cc  # noqa: E402
from workflow_format import spec_from_object_info, ui_to_api  # noqa: E402

EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
PACK_FOLDER = "comfyui_stem"  # the pack's folder name in custom_nodes (the Templates category)


@pytest.fixture(scope="module")
def info(server):
    return json.loads(cc._http("GET", f"http://{server.address}/object_info")[1])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_matches_the_servers_nodes(info, path):
    """Every node type exists on this server and the widget values map onto its inputs exactly as the shipped
    API twin says (what the editor would queue)."""
    ui = json.loads(path.read_text())
    skip_without_optional_nodes(info, ui)
    specs = {cls: spec_from_object_info(info[cls]) for cls in {n["type"] for n in ui["nodes"]} if cls in info}
    twin = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    assert ui_to_api(ui, specs) == twin


def test_templates_route_lists_every_example(server):
    status, body = cc._http("GET", f"http://{server.address}/api/workflow_templates")
    if status == 404:
        pytest.skip("this host has no /api/workflow_templates (added in ComfyUI 0.3.12; the pinned a28a9dc8 of "
                    "2024-03 predates it): the examples are checked against /object_info instead")
    listed = json.loads(body)
    # 0.3.6x lists every json directly in example_workflows/ AND in workflows/ (another folder name it accepts):
    # the UI twins live in workflows/ui/ so that each example is listed once
    assert sorted(listed.get(PACK_FOLDER, [])) == sorted(p.stem for p in EXAMPLES), listed.get(PACK_FOLDER)
    for path in EXAMPLES:
        served = cc._http("GET", f"http://{server.address}/api/workflow_templates/{PACK_FOLDER}/{path.name}")[1]
        assert json.loads(served) == json.loads(path.read_text())
        thumb = cc._http("GET", f"http://{server.address}/api/workflow_templates/{PACK_FOLDER}/{path.stem}.jpg")[1]
        assert bytes(thumb[:3]) == b"\xff\xd8\xff"


def test_videohelpersuite_variant_runs(info, server_input, run, tmp_path):
    """VHS Load Video (frames + audio) -> STEM -> VHS Video Combine (mp4 with the audio), on the tiny model."""
    wf = json.loads((REPO / "workflows" / "api" / "vhs_tokenflow.json").read_text())
    skip_without_optional_nodes(info, wf)
    result = run(small(wf, server_input("man-skiing.mp4")), out_dir=str(tmp_path))  # the clip with sound
    mp4s = [p for p in result["downloaded"] if p.endswith(".mp4")]
    assert mp4s, result["downloaded"]
    import av
    with av.open(mp4s[0]) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"], "the clip's sound was dropped"


def test_core_video_variant_runs(info, clips, run, tmp_path):
    """Current ComfyUI (0.3.4x+): core Load Video -> Get Video Components -> STEM -> Create Video (with the
    source's audio) -> Save Video, on the tiny model. Skipped on hosts without the core video nodes (the pinned
    2024-03 one); runs when the suite is pointed at a current host (COMFYUI_DIR=...)."""
    wf = json.loads((REPO / "workflows" / "api" / "core_video_tokenflow.json").read_text())
    skip_without_optional_nodes(info, wf)
    # core Load Video lists only the top level of the input folder: the clip with sound goes there for this test
    clip = COMFYUI_DIR / "input" / "stem_test_core_video.mp4"
    shutil.copy(clips / "man-skiing.mp4", clip)
    try:
        # core Load Video has no frame cap nor size: ImageScale and ImageFromBatch below
        wf = cc.apply_overrides(wf, cc.Overrides(tiny_model=True, video=clip.name, steps=4))
        # core Load Video keeps every frame at full size (718x718 here): 6 frames at 64x64 go on
        wf["90"] = {"class_type": "ImageScale", "inputs": {"image": ["14", 0], "upscale_method": "bilinear",
                                                           "width": 64, "height": 64, "crop": "center"}}
        wf["91"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["90", 0], "batch_index": 0, "length": 6}}
        for node in wf.values():
            for name in ("pixels", "source"):
                if node["inputs"].get(name) == ["14", 0]:
                    node["inputs"][name] = ["91", 0]
        result = run(wf, out_dir=str(tmp_path), timeout=900)
    finally:
        clip.unlink()
    mp4s = [p for p in result["downloaded"] if p.endswith(".mp4")]
    assert mp4s, result["downloaded"]
    import av
    with av.open(mp4s[0]) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (64, 64)
        assert container.streams.audio, "Create Video dropped the source's audio"
