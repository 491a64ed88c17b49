"""Partial batches: ComfyUI context windows (current hosts: model_options["context_handler"], and per UNet call
transformer_options["context_window"]) and VideoHelperSuite's Meta Batch (a loader whose meta_batch input is
connected) hand STEM part of a video. The pinned host has neither, so these tests set exactly what those hosts
and packs set and check that STEM refuses with a message that says why and what to do."""
import inspect
import types

import pytest
import torch

from comfyui_stem.stem_core.attention import video_batch
from comfyui_stem.stem_core.errors import STEMError
from tests.doc_table import check_section
from tests.host.test_fatezero_edit import encode, load_clip

STEPS = 2
ROWS = {}


class IndexListContextHandler:
    """Stands in for comfy.context_windows.IndexListContextHandler (ComfyUI >= 2025-08): the fields nodes read."""
    context_length, context_overlap, dim = 2, 1, 0


def _window(frames):
    """What IndexListContextHandler.evaluate_context_windows puts in transformer_options["context_window"]."""
    return types.SimpleNamespace(index_list=list(frames), context_length=len(frames), dim=0)


@pytest.fixture(scope="module")
def source(comfy_host, tiny, clips):
    return encode(comfy_host, tiny, load_clip(clips, 4, 32), "a wolf walking in the snow")


def _with_context_handler(model):
    m = model.clone()
    m.model_options["context_handler"] = IndexListContextHandler()
    return m


def test_attention_call_in_a_context_window_is_refused():
    with pytest.raises(STEMError) as e:
        video_batch(4, {"cond_or_uncond": [0], "context_window": _window([0, 1, 2, 3])})
    text = str(e.value)
    assert "context windows (4 frames per call)" in text and "every frame" in text
    assert "remove the Context Windows node" in text and e.value.input_name == "model"
    assert video_batch(4, {"cond_or_uncond": [0]}) == ([0], 4)  # a whole-video call passes


@pytest.mark.parametrize("name", ["STEMBasisEstimate", "STEMInvert", "STEMReconstruct", "STEMTokenFlowEdit",
                                  "STEMAttentionStore", "STEMFateZeroEdit"])
def test_every_model_node_refuses_a_context_window_model(comfy_host, node, tiny, name):
    model = _with_context_handler(tiny[0])
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS[name]
    fn = getattr(node(name), cls.FUNCTION)
    required = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
    assert required[0].name == "model"
    with pytest.raises(STEMError) as e:
        # the model check comes first: the other arguments are never looked at
        fn(model, *([None] * (len(required) - 1)))
    text = str(e.value)
    assert text.startswith("model:") and "IndexListContextHandler, 2 frames per window" in text, text
    assert "every frame of the video at once" in text and "frame_load_cap" in text
    if name == "STEMInvert":
        ROWS["handler"] = ("a MODEL with ComfyUI context windows (model_options context_handler)",
                           "every STEM node taking a MODEL refuses it", text)


def test_inversion_under_context_windows_is_refused_mid_sampling(node, tiny, source):
    """What a context-window sampler does on a current host: the UNet call carries context_window."""
    latent, cond = source
    stem = node("STEMBasisEstimate").patch(tiny[0], "stem", 8, 2, 0.05, 0, "paper", "all", True, "tokens", 0)[0]
    stem.model_options["transformer_options"] = dict(stem.model_options["transformer_options"],
                                                     context_window=_window([0, 1]))
    with pytest.raises(STEMError) as e, torch.no_grad():
        node("STEMInvert").invert(stem, latent, cond, STEPS)
    assert "context windows (2 frames per call)" in str(e.value)
    ROWS["window"] = ("a UNet call inside a context window (transformer_options context_window)",
                      "the STEM attention patch refuses the call", str(e.value))


def _vhs_prompt(meta_batch_linked: bool):
    loader_inputs = {"video": "clip.mp4", "frame_load_cap": 0}
    if meta_batch_linked:
        loader_inputs["meta_batch"] = ["9", 0]
    return {
        "9": {"class_type": "VHS_BatchManager", "inputs": {"frames_per_batch": 16, "count": 0}},
        "1": {"class_type": "VHS_LoadVideo", "inputs": loader_inputs},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "6": {"class_type": "STEMInvert", "inputs": {"model": ["2", 0], "latent": ["3", 0],
                                                     "source_conditioning": ["4", 0], "steps": STEPS}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["2", 1]}},
    }


def test_invert_refuses_a_vhs_meta_batch(comfy_host, node, tiny, source):
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMInvert"]
    assert cls.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    latent, cond = source
    with pytest.raises(STEMError) as e:
        node("STEMInvert").invert(tiny[0], latent, cond, STEPS, prompt=_vhs_prompt(True), unique_id="6")
    text = str(e.value)
    assert text.startswith("latent:") and "16 frames per run" in text and "node 1 (VHS_LoadVideo)" in text
    assert "node 9 (VHS_BatchManager)" in text and "disconnect meta_batch from node 1" in text
    ROWS["meta_batch"] = ("VideoHelperSuite Meta Batch upstream of STEM Invert", "STEM Invert refuses the run", text)
    # the same graph without the meta batch runs (and one with the batch manager elsewhere, unconnected)
    with torch.no_grad():
        out = node("STEMInvert").invert(tiny[0], latent, cond, STEPS, prompt=_vhs_prompt(False), unique_id="6")
    assert out[1].frames == 4


def test_zz_docs_table_matches():
    if set(ROWS) != {"handler", "window", "meta_batch"}:
        pytest.skip("not every partial-batch case ran in this session (selection); the table is checked on full runs")
    check_section("partial_batches", [ROWS[k] for k in ("handler", "window", "meta_batch")],
                  "tests/host/test_partial_batches.py")
