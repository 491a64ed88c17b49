"""STEM Save Video inside the pinned ComfyUI host: the file (h264 + aac / webp / gif, metadata from the hidden
inputs), the UI result the stock frontends play (an animated WEBP in `images` with `animated`), clear errors."""
import json
import os

import av
import pytest
import torch
from PIL import Image

from comfyui_stem.stem_core.errors import STEMError
from tests.doc_table import check_section

PROMPT = {"3": {"class_type": "STEMSaveVideo", "inputs": {"fps": 8.0}}}
EXTRA = {"workflow": {"nodes": [{"id": 3, "type": "STEMSaveVideo"}], "links": [], "version": 0.4}}


def _frames(n=9, h=24, w=40):
    ramp = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(n, h, w, 3).clone()
    return (ramp * 0.5 + torch.linspace(0, 0.5, n).view(n, 1, 1, 1)).clamp(0, 1)


def _file(comfy_host, entry):
    fp = comfy_host["folder_paths"]
    root = fp.get_output_directory() if entry["type"] == "output" else fp.get_temp_directory()
    return os.path.join(root, entry["subfolder"], entry["filename"])


def test_inputs(comfy_host):
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMSaveVideo"]
    spec = cls.INPUT_TYPES()
    assert spec["required"]["format"][0] == ["mp4", "webp", "gif"]
    assert (spec["required"]["crf"][1]["min"], spec["required"]["crf"][1]["max"]) == (0, 51)
    assert spec["optional"]["audio"][0] == "AUDIO"
    assert spec["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert cls.OUTPUT_NODE and all(v[1].get("tooltip") for s in ("required", "optional")
                                   for v in spec[s].values())


def test_mp4_with_audio_and_playing_preview(comfy_host, node):
    n, fps, rate = 9, 6.0, 22050
    audio = {"waveform": torch.sin(torch.arange(rate * 3) / 10.0).view(1, 1, -1).repeat(1, 2, 1), "sample_rate": rate}
    out = node("STEMSaveVideo").save(_frames(n), fps, "STEM/test_save", format="mp4", crf=23, audio=audio,
                                     prompt=PROMPT, extra_pnginfo=EXTRA)
    ui = out["ui"]
    assert ui["animated"] == (True,) and len(ui["images"]) == 1
    shown, saved = ui["images"][0], ui["stem_video"][0]
    assert shown["filename"].endswith(".webp") and shown["type"] == "temp"
    assert saved["filename"].endswith(".mp4") and saved["type"] == "output" and saved["audio"] is True
    preview = Image.open(_file(comfy_host, shown))
    assert preview.is_animated and preview.n_frames == n and preview.size == (40, 24)
    with av.open(_file(comfy_host, saved)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in c.decode(video=0)) == n
        assert json.loads(c.metadata["prompt"]) == PROMPT and json.loads(c.metadata["workflow"]) == EXTRA["workflow"]
    with av.open(_file(comfy_host, saved)) as c:
        seconds = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
    assert abs(seconds - n / fps) <= 1 / fps


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_animated_formats(comfy_host, node, fmt):
    out = node("STEMSaveVideo").save(_frames(5), 5.0, "STEM/test_save", format=fmt, crf=19,
                                     prompt=PROMPT, extra_pnginfo=EXTRA)
    saved, shown = out["ui"]["stem_video"][0], out["ui"]["images"][0]
    im = Image.open(_file(comfy_host, saved))
    assert im.format == fmt.upper() and im.n_frames == 5
    # the preview is always an animated WEBP: both stock frontends play it as an <img>
    assert shown["filename"].endswith(".webp") and Image.open(_file(comfy_host, shown)).n_frames == 5
    if fmt == "webp":
        assert im.getexif()[0x010F] == "workflow:" + json.dumps(EXTRA["workflow"])


def test_large_frames_get_a_small_preview(comfy_host, node):
    out = node("STEMSaveVideo").save(_frames(2, 600, 1024), 4.0, "STEM/test_save", format="mp4", crf=30)
    assert Image.open(_file(comfy_host, out["ui"]["images"][0])).size == (512, 300)


BAD = [  # (label for the docs, node arguments, input named in the error)
    ("crf 60", {"crf": 60}, "crf"),
    ("crf -1", {"crf": -1}, "crf"),
    ("audio: a file name instead of AUDIO", {"audio": "sound.wav"}, "audio"),
    ("audio: a tensor instead of the AUDIO dict", {"audio": torch.zeros(1, 2, 100)}, "audio"),
    ("audio without sample_rate", {"audio": {"waveform": torch.zeros(1, 2, 10)}}, "audio"),
    ("audio waveform of shape [100]", {"audio": {"waveform": torch.zeros(100), "sample_rate": 44100}}, "audio"),
    ("audio sample_rate 0", {"audio": {"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}}, "audio"),
    ("fps 0", {"fps": 0.0}, "fps"),
    ("format avi", {"format": "avi"}, "format"),
]


def test_bad_inputs(comfy_host, node):
    out = os.path.join(comfy_host["folder_paths"].get_output_directory(), "STEM")
    written = lambda: {f for f in os.listdir(out) if f.startswith("test_bad")} if os.path.isdir(out) else set()  # noqa: E731
    before = written()
    rows = []
    for label, kwargs, name in BAD:
        args = dict(fps=8.0, filename_prefix="STEM/test_bad", format="mp4", crf=19)
        args.update(kwargs)
        with pytest.raises(STEMError) as e:
            node("STEMSaveVideo").save(_frames(3), **args)
        assert e.value.input_name == name and str(e.value).startswith(name + ":"), (label, str(e.value))
        assert e.value.fix or "must be one of" in str(e.value), f"{label}: no fix in {e.value}"
        rows.append((f"STEM Save Video: {label}", "error, nothing written", str(e.value)))
    assert written() == before
    check_section("save_video", rows, "tests/host/test_save_video.py")
