"""stem_core.video_io.write_video, the pack's one writer: H.264 + AAC mp4 that browsers play, animated WEBP/GIF,
prompt and workflow in the file's metadata, and clear errors for bad arguments. Synthetic frames only."""
import json
import math

import av
import pytest
import torch
from PIL import Image

from comfyui_stem.stem_core.errors import STEMError
from comfyui_stem.stem_core.video_io import load_video, write_video


def _frames(n=12, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth colours (random 4x4 grid, bilinear): what H.264's 4:2:0 chroma can carry
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear",
                                           align_corners=False).movedim(1, -1)
    shift = torch.linspace(0, 0.3, n).view(n, 1, 1, 1)
    return (base * 0.7 + shift).clamp(0, 1).float()


def _tone(seconds, rate=44100, channels=2, freq=440.0):
    t = torch.arange(int(seconds * rate)) / rate
    wave = torch.sin(2 * math.pi * freq * t) * 0.5
    return {"waveform": wave.repeat(1, channels, 1).float(), "sample_rate": rate}


def _probe(path):
    """(video codec, pix_fmt, decoded video frames, video seconds, audio codec or None, audio seconds, metadata)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        frames = sum(1 for _ in c.decode(vs))
        fps = float(vs.average_rate)
        meta = dict(c.metadata)
        vcodec, pix = vs.codec_context.name, vs.codec_context.pix_fmt
    audio_codec, audio_s = None, 0.0
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            audio_codec = a.codec_context.name
            samples = sum(f.samples for f in c.decode(a))
            audio_s = samples / a.rate
    return vcodec, pix, frames, frames / fps, audio_codec, audio_s, meta


@pytest.mark.parametrize("n,fps", [(12, 8.0), (31, 30000 / 1001)])
def test_mp4_h264_aac_exact_frames_audio_trimmed(tmp_path, n, fps):
    path = write_video(_frames(n), tmp_path / "v.mp4", fps, crf=23, audio=_tone(n / fps + 2.0))  # 2 s too long
    vcodec, pix, frames, video_s, acodec, audio_s, _ = _probe(path)
    assert (vcodec, pix) == ("h264", "yuv420p")
    assert frames == n
    assert acodec == "aac"
    assert abs(audio_s - video_s) <= 1.0 / fps, (audio_s, video_s)


def test_mp4_short_audio_mono_odd_rate_and_odd_size(tmp_path):
    # 37 kHz is not an AAC rate (resampled to 48 kHz); odd sides are padded to even for yuv420p
    audio = _tone(0.5, rate=37000, channels=1)
    path = write_video(_frames(10, 33, 45), tmp_path / "v.mp4", 10.0, audio=audio)
    vcodec, _, frames, video_s, acodec, audio_s, _ = _probe(path)
    assert (vcodec, frames, acodec) == ("h264", 10, "aac")
    assert abs(audio_s - 0.5) < 0.05 and audio_s < video_s
    clip = load_video(path)
    assert clip.frame_count == 10 and clip.audio is not None and clip.audio["waveform"].shape[1] == 1


def test_mp4_round_trip_pixels(tmp_path):
    frames = _frames(6, 64, 64)
    path = write_video(frames, tmp_path / "v.mp4", 6.0, crf=0)
    back = load_video(path).frames
    assert back.shape == frames.shape
    # yuv420p subsamples chroma, so even crf 0 is not exact; a wrong colour order would be off by ~0.3
    assert float((back - frames).abs().mean()) < 0.04
    lossy = load_video(write_video(frames, tmp_path / "w.mp4", 6.0, crf=45)).frames
    assert float((lossy - frames).abs().mean()) > float((back - frames).abs().mean())


def test_mp4_metadata_round_trip(tmp_path):
    prompt = {"1": {"class_type": "STEMVideoLoad", "inputs": {"video": "a.mp4"}}}
    workflow = {"nodes": [{"id": 1, "type": "STEMVideoLoad"}], "links": []}
    meta = {"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)}
    path = write_video(_frames(4), tmp_path / "v.mp4", 4.0, metadata=meta)
    got = _probe(path)[-1]
    assert json.loads(got["prompt"]) == prompt and json.loads(got["workflow"]) == workflow
    data = open(path, "rb").read()
    assert b"mdta" in data and b"keys" in data  # the mp4 'keys' box current frontends parse


def test_webp_animated_with_comfy_exif(tmp_path):
    prompt, workflow = {"1": {"inputs": {}}}, {"nodes": []}
    path = write_video(_frames(5), tmp_path / "v.webp", 5.0, format="webp",
                       metadata={"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)})
    im = Image.open(path)
    assert im.format == "WEBP" and im.is_animated and im.n_frames == 5
    exif = im.getexif()
    # SaveAnimatedWEBP's layout, which the frontends read: prompt in 0x0110, workflow in 0x010F
    assert exif[0x0110] == "prompt:" + json.dumps(prompt)
    assert exif[0x010F] == "workflow:" + json.dumps(workflow)


def test_gif_animated(tmp_path):
    path = write_video(_frames(7), tmp_path / "v.gif", 10.0, format="gif", audio=_tone(1.0))
    im = Image.open(path)
    assert im.format == "GIF" and im.n_frames == 7 and im.info["duration"] == 100


@pytest.mark.parametrize("kwargs,name,words", [
    ({"crf": 52}, "crf", "0 to 51"),
    ({"crf": -1}, "crf", "0 to 51"),
    ({"crf": 19.5}, "crf", "0 to 51"),
    ({"format": "avi"}, "format", "mp4, webp, gif"),
    ({"fps": 0}, "fps", "> 0"),
    ({"fps": float("nan")}, "fps", "> 0"),
    ({"audio": torch.zeros(1, 2, 100)}, "audio", "got Tensor"),
    ({"audio": {"waveform": torch.zeros(1, 2, 100)}}, "audio", "sample_rate"),
    ({"audio": {"waveform": torch.zeros(100), "sample_rate": 44100}}, "audio", "shape (100,)"),
    ({"audio": {"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}}, "audio", "sample_rate"),
])
def test_bad_arguments_are_stem_errors(tmp_path, kwargs, name, words):
    args = dict(fps=8.0)
    args.update(kwargs)
    with pytest.raises(STEMError) as e:
        write_video(_frames(3), tmp_path / "v.mp4", args.pop("fps"), **args)
    assert e.value.input_name == name and words in str(e.value) and str(e.value).startswith(f"{name}:")
    assert not (tmp_path / "v.mp4").exists()


def test_bad_images(tmp_path):
    with pytest.raises(STEMError) as e:
        write_video(torch.zeros(0, 8, 8, 3), tmp_path / "v.mp4", 8.0)
    assert e.value.input_name == "images"
