"""STEM Load Video inside the pinned ComfyUI host (in-process, CPU)."""
import shutil

import pytest
import torch

LOAD_DEFAULTS = dict(force_rate=0.0, custom_width=0, custom_height=0, frame_load_cap=0, skip_first_frames=0,
                     select_every_nth=1, size_mode="resize")


def _load(node, video, **kw):
    return node("STEMVideoLoad").load(video, **{**LOAD_DEFAULTS, **kw})


def test_registered(comfy_host):
    nodes = comfy_host["nodes"]
    cls = nodes.NODE_CLASS_MAPPINGS["STEMVideoLoad"]
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["STEMVideoLoad"] == "STEM Load Video" == cls.TITLE
    assert cls.CATEGORY.endswith("/video")
    assert cls.RETURN_TYPES == ("IMAGE", "INT", "FLOAT", "AUDIO", "STRING")


def test_input_types_list_input_folder(comfy_host, input_with_clip, input_dir):
    input_with_clip("wolf.mp4")
    input_with_clip("car-turn")
    (input_dir / "notes.txt").write_text("not listed")
    spec = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMVideoLoad"].INPUT_TYPES()["required"]
    names, opts = spec["video"]
    assert names == ["car-turn", "wolf.mp4"] and opts.get("video_upload") is True
    for key, value in spec.items():
        assert value[1].get("tooltip"), f"input {key} has no tooltip"
    assert spec["size_mode"][0] == ["resize", "crop"]


def test_load_wolf(node, input_with_clip):
    input_with_clip("wolf.mp4")
    image, count, fps, audio, info = _load(node, "wolf.mp4")
    assert image.shape == (40, 512, 512, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert count == 40 and isinstance(count, int) and fps == 20.0 and isinstance(fps, float)
    assert audio is None
    assert info.startswith("wolf.mp4: 40 frames 512x512 @ 20 fps")


def test_man_skiing_audio(node, input_with_clip):
    input_with_clip("man-skiing.mp4")
    image, count, fps, audio, info = _load(node, "man-skiing.mp4", custom_width=64)
    assert count == 91 and image.shape == (91, 64, 64, 3) and abs(fps - 30000 / 1001) < 1e-9
    assert isinstance(audio, dict) and audio["sample_rate"] > 0
    wf = audio["waveform"]
    assert wf.dim() == 3 and wf.shape[0] == 1 and wf.shape[1] >= 1 and wf.shape[2] > 0
    assert torch.isfinite(wf).all() and "audio" in info


def test_frame_folder_through_node(node, input_with_clip):
    input_with_clip("car-turn")
    image, count, fps, audio, _ = _load(node, "car-turn", custom_width=64)
    assert image.shape == (8, 64, 64, 3) and count == 8 and fps == 8.0 and audio is None


def test_is_changed(comfy_host, input_dir, clips):
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMVideoLoad"]
    src = (clips / "truck.mp4").read_bytes()
    target = input_dir / "clip.mp4"
    target.write_bytes(src)
    first = cls.IS_CHANGED(video="clip.mp4", **LOAD_DEFAULTS)
    assert cls.IS_CHANGED(video="clip.mp4", **LOAD_DEFAULTS) == first  # untouched: served from cache
    assert first == f"file:{target.stat().st_mtime_ns}:{target.stat().st_size}"  # stat only, no read
    shutil.copy(clips / "wolf.mp4", target)  # different content under the same name
    assert cls.IS_CHANGED(video="clip.mp4", **LOAD_DEFAULTS) != first


def test_validate_inputs(comfy_host, input_with_clip):
    input_with_clip("wolf.mp4")
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMVideoLoad"]
    assert cls.VALIDATE_INPUTS(video="wolf.mp4") is True
    msg = cls.VALIDATE_INPUTS(video="../etc/passwd")
    assert isinstance(msg, str) and "outside ComfyUI's input folder" in msg
    assert "outside" in cls.VALIDATE_INPUTS(video="/etc/passwd")
    missing = cls.VALIDATE_INPUTS(video="nope.mp4")
    assert isinstance(missing, str) and "nope.mp4" in missing and "not found" in missing


def _validate(prompt):
    """execution.validate_prompt(prompt) on the pinned host; ComfyUI 2025+ made it async with more arguments."""
    import asyncio
    import inspect

    import execution

    if "partial_execution_list" in inspect.signature(execution.validate_prompt).parameters:
        return asyncio.run(execution.validate_prompt("test", prompt, None))
    return execution.validate_prompt(prompt)


def test_server_validation_rejects_traversal(comfy_host, input_with_clip):
    """The host's own prompt validation turns VALIDATE_INPUTS' text into a node error before execution."""
    input_with_clip("wolf.mp4")
    prompt = {
        "1": {"class_type": "STEMVideoLoad", "inputs": {"video": "../etc/passwd", **LOAD_DEFAULTS}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    valid, _, _, node_errors = _validate(prompt)
    assert not valid
    text = str(node_errors)
    assert "outside ComfyUI's input folder" in text
    prompt["1"]["inputs"]["video"] = "wolf.mp4"
    assert _validate(prompt)[0] is True


def test_node_errors(node, input_with_clip, input_dir):
    input_with_clip("wolf.mp4")
    with pytest.raises(ValueError, match=r"missing\.mp4.*not found"):
        _load(node, "missing.mp4")
    with pytest.raises(ValueError, match=r"wolf\.mp4.*has 40 frames"):
        _load(node, "wolf.mp4", skip_first_frames=100, custom_width=16)
    with pytest.raises(ValueError, match="outside ComfyUI's input folder"):
        _load(node, "../wolf.mp4")
