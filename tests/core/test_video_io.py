"""stem_core.video_io on the real shared clips (counts from ../shared/data/videos/SOURCES.md); no ComfyUI."""
import os
import shutil
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from comfyui_stem.stem_core import video_io
from comfyui_stem.stem_core.video_io import (VideoLoadError, change_signature, list_inputs, load_video, resolve_in_input_dir,
                                target_size)


@pytest.fixture(scope="module")
def wolf_full(clips):
    return load_video(clips / "wolf.mp4")


def _write_video(path, frames, fps=12):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


# ----------------------------------------------------------------------------- real clips, exact counts

def test_wolf_whole(wolf_full):
    c = wolf_full
    assert c.frames.shape == (40, 512, 512, 3) and c.frames.dtype == torch.float32
    assert c.frame_count == 40 and (c.width, c.height) == (512, 512)
    assert c.fps == 20.0 and c.source_fps == 20.0
    assert 0.0 <= float(c.frames.min()) and float(c.frames.max()) <= 1.0 and float(c.frames.std()) > 0.05
    assert c.audio is None
    assert c.source_info["source_frame_count"] == 40 and c.source_info["kind"] == "video"
    assert "40 frames 512x512 @ 20 fps" in c.describe() and "no audio" in c.describe()


def test_truck_count(clips):
    c = load_video(clips / "truck.mp4", custom_width=64)
    assert c.frame_count == 21 and c.frames.shape == (21, 64, 64, 3) and c.fps == 10.0


def test_man_skiing_count_rate_audio(clips):
    c = load_video(clips / "man-skiing.mp4", custom_width=64)
    assert c.frame_count == 91 and c.frames.shape == (91, 64, 64, 3)
    assert c.fps == float(Fraction(30000, 1001)) and c.source_info["source_fps_fraction"] == "30000/1001"
    assert (c.source_info["source_width"], c.source_info["source_height"]) == (718, 718)
    wf, sr = c.audio["waveform"], c.audio["sample_rate"]
    assert sr > 0 and wf.dim() == 3 and wf.shape[0] == 1 and wf.shape[1] >= 1 and wf.dtype == torch.float32
    assert torch.isfinite(wf).all() and float(wf.abs().max()) > 0
    assert abs(wf.shape[-1] / sr - 91 / c.fps) < 0.2  # the whole track, about 3 s


def test_audio_trimmed_to_selection(clips):
    c = load_video(clips / "man-skiing.mp4", custom_width=64, skip_first_frames=30, frame_load_cap=30)
    assert c.frame_count == 30
    seconds = c.audio["waveform"].shape[-1] / c.audio["sample_rate"]
    assert abs(seconds - 30 / c.fps) < 0.01


def test_no_audio_when_not_wanted(clips):
    c = load_video(clips / "man-skiing.mp4", custom_width=64, frame_load_cap=2, load_audio_track=False)
    assert c.audio is None


def test_frame_folder(clips):
    c = load_video(clips / "car-turn")
    assert c.frames.shape == (8, 512, 512, 3) and c.frame_count == 8
    assert c.source_fps is None and c.fps == video_io.DEFAULT_FOLDER_FPS == 8.0 and c.audio is None
    first = cv2.cvtColor(cv2.imread(str(clips / "car-turn" / "00000.png")), cv2.COLOR_BGR2RGB)
    assert torch.equal((c.frames[0] * 255).round().to(torch.uint8), torch.from_numpy(first))
    # force_rate only sets the reported rate of a folder; selection options apply as for videos
    c2 = load_video(clips / "car-turn", force_rate=12, skip_first_frames=1, select_every_nth=2,
                    custom_width=64)
    assert c2.fps == 12.0 and c2.frame_count == 4 and c2.frames.shape[1:] == (64, 64, 3)


def test_folder_natural_order(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (10, 2, 1):  # natural order is 1, 2, 10 (plain sorting would give 1, 10, 2)
        cv2.imwrite(str(d / f"f{i}.png"), np.full((16, 16, 3), i * 10, np.uint8))
    c = load_video(d)
    assert [round(float(c.frames[k, 0, 0, 0]) * 255) for k in range(3)] == [10, 20, 100]


# ----------------------------------------------------------------------------- sizes

def test_size_rule():
    assert target_size(718, 718, size_mode="resize") == (720, 720)
    assert target_size(718, 718, size_mode="crop") == (712, 712)
    assert target_size(716, 716) == (720, 720)  # halves round up
    assert target_size(715, 715) == (712, 712)
    assert target_size(3, 3) == (8, 8)  # at least 8
    assert target_size(1280, 720, custom_width=512) == (512, 288)  # one side: aspect kept
    assert target_size(1280, 720, custom_height=100) == (176, 104)  # 177.8 -> 176, 100 -> 104
    assert target_size(1280, 720, custom_height=100, size_mode="crop") == (176, 96)
    assert target_size(640, 480, 300, 300, "resize") == (304, 304)
    with pytest.raises(VideoLoadError, match="size_mode 'resize'"):
        target_size(5, 5, size_mode="crop")


def test_man_skiing_resize_and_crop(clips):
    path = clips / "man-skiing.mp4"
    r = load_video(path, frame_load_cap=1, load_audio_track=False)
    c = load_video(path, frame_load_cap=1, size_mode="crop", load_audio_track=False)
    assert r.frames.shape == (1, 720, 720, 3) and c.frames.shape == (1, 712, 712, 3)
    assert all(v % 8 == 0 for v in (r.width, r.height, c.width, c.height))
    cap = cv2.VideoCapture(str(path))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    raw = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    # crop without a custom size cuts 3 pixels off each border and scales nothing
    assert torch.equal((c.frames[0] * 255).round().to(torch.uint8), torch.from_numpy(raw[3:715, 3:715]))


def test_crop_with_custom_size_covers_then_crops(clips):
    c = load_video(clips / "wolf.mp4", custom_width=100, custom_height=50, size_mode="crop",
                   frame_load_cap=1)
    assert c.frames.shape == (1, 48, 96, 3)
    r = load_video(clips / "wolf.mp4", custom_width=100, custom_height=50, frame_load_cap=1)
    assert r.frames.shape == (1, 48, 104, 3)


# ----------------------------------------------------------------------------- selection

def test_skip_nth_cap_against_full_decode(clips, wolf_full):
    c = load_video(clips / "wolf.mp4", skip_first_frames=5, select_every_nth=3, frame_load_cap=4)
    assert c.frame_count == 4 and c.source_info["first_frame_index"] == 5
    assert torch.equal(c.frames, wolf_full.frames[[5, 8, 11, 14]])
    # the cap stops decoding early
    assert c.source_info["decoded_source_frames"] == 15


def test_nth_without_cap(clips, wolf_full):
    c = load_video(clips / "wolf.mp4", select_every_nth=7, skip_first_frames=1)
    assert torch.equal(c.frames, wolf_full.frames[1::7]) and c.frame_count == 6 and c.fps == 20.0


def test_force_rate_halves(clips, wolf_full):
    c = load_video(clips / "wolf.mp4", force_rate=10)
    assert c.frame_count == 20 and c.fps == 10.0 and c.source_fps == 20.0
    assert torch.equal(c.frames, wolf_full.frames[::2])


def test_force_rate_duplicates(clips):
    c = load_video(clips / "truck.mp4", force_rate=20, custom_width=32)
    base = load_video(clips / "truck.mp4", custom_width=32)
    assert c.frame_count == 42 and c.fps == 20.0
    assert torch.equal(c.frames[0::2], base.frames) and torch.equal(c.frames[1::2], base.frames)
    # NTSC 29.97 -> 10 fps: ceil(91 * 10 / 29.97) = 31 frames, exact rational timing
    n = load_video(clips / "man-skiing.mp4", force_rate=10, custom_width=16, load_audio_track=False)
    assert n.frame_count == 31


def test_on_frame_progress_and_abort(clips):
    calls = []
    load_video(clips / "truck.mp4", custom_width=16, on_frame=lambda d, t: calls.append((d, t)))
    assert [d for d, _ in calls] == list(range(1, 22)) and calls[-1][1] == 21

    class Stop(Exception):
        pass

    def abort(done, total):
        if done == 3:
            raise Stop()

    with pytest.raises(Stop):
        load_video(clips / "truck.mp4", custom_width=16, on_frame=abort)


# ----------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path):
    with pytest.raises(VideoLoadError, match="nothere.mp4.*not found"):
        load_video(tmp_path / "nothere.mp4")


def test_text_file_with_video_extension(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoLoadError, match=r"could not decode.*notes\.mp4.*is it a video"):
        load_video(p)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(VideoLoadError, match=r"empty\.mp4.*0 bytes"):
        load_video(p)


def test_truncated_mp4_loads_decodable_frames_with_warning(tmp_path, clips):
    data = (clips / "truck.mp4").read_bytes()  # index at the front: the first half decodes
    p = tmp_path / "half_truck.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="truncated"):
        c = load_video(p, custom_width=32)
    assert 0 < c.frame_count < 21 and c.source_info["warnings"]
    assert "warning" in c.describe()


def test_truncated_mp4_without_index_is_a_clear_error(tmp_path, clips):
    data = (clips / "wolf.mp4").read_bytes()  # index at the end: nothing decodes
    p = tmp_path / "half_wolf.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoLoadError, match=r"could not decode.*half_wolf\.mp4"):
        load_video(p)


def test_zero_frame_selection_names_count(clips):
    with pytest.raises(VideoLoadError, match=r"no frames selected from .*wolf\.mp4.*has 40 frames"):
        load_video(clips / "wolf.mp4", skip_first_frames=40, custom_width=16)
    with pytest.raises(VideoLoadError, match=r"car-turn.*has 8 images"):
        load_video(clips / "car-turn", skip_first_frames=8)


def test_folder_without_images(tmp_path):
    d = tmp_path / "nothing_here"
    d.mkdir()
    (d / "readme.txt").write_text("no frames")
    with pytest.raises(VideoLoadError, match="nothing_here.*no images"):
        load_video(d)


def test_folder_mixed_sizes(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    cv2.imwrite(str(d / "00000.png"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(d / "00001.png"), np.zeros((24, 16, 3), np.uint8))
    with pytest.raises(VideoLoadError, match=r"mixed.*00001\.png.*same size"):
        load_video(d)


def test_folder_broken_image(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    cv2.imwrite(str(d / "00000.png"), np.zeros((16, 16, 3), np.uint8))
    (d / "00001.png").write_bytes(b"not a png")
    with pytest.raises(VideoLoadError, match=r"broken.*00001\.png"):
        load_video(d)


def test_one_frame_video(tmp_path):
    p = _write_video(tmp_path / "one.mp4", [np.full((48, 64, 3), 200, np.uint8)])
    c = load_video(p)
    assert c.frames.shape == (1, 48, 64, 3) and c.fps == 12.0
    assert abs(float(c.frames.mean()) - 200 / 255) < 0.03


def test_declared_frame_count_is_not_trusted(monkeypatch, clips):
    real = video_io._probe

    def lying_probe(path):
        info = real(path)
        info["declared_frames"] = 10 ** 12  # container metadata lying
        return info

    monkeypatch.setattr(video_io, "_probe", lying_probe)
    with pytest.warns(RuntimeWarning, match="decoded 21 of the 1000000000000"):
        c = load_video(clips / "truck.mp4", custom_width=16)
    assert c.frame_count == 21


def test_max_frames_cap(clips):
    with pytest.raises(VideoLoadError, match=r"wolf\.mp4.*max_frames=10.*frame_load_cap"):
        load_video(clips / "wolf.mp4", custom_width=16, max_frames=10)
    assert load_video(clips / "wolf.mp4", custom_width=16, max_frames=10, frame_load_cap=10).frame_count == 10


@pytest.mark.parametrize("opt,value", [
    ("custom_width", -8), ("custom_height", -1), ("frame_load_cap", -1), ("skip_first_frames", -2),
    ("select_every_nth", 0), ("force_rate", -5.0), ("force_rate", float("nan")), ("size_mode", "stretch"),
    ("custom_width", video_io.MAX_SIDE + 8), ("max_frames", 0),
])
def test_bad_options(clips, opt, value):
    with pytest.raises(VideoLoadError, match=rf"wolf\.mp4.*{opt}"):
        load_video(clips / "wolf.mp4", **{opt: value})


# ----------------------------------------------------------------------------- input folder

def test_resolve_in_input_dir(tmp_path):
    root = tmp_path / "input"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"x")
    (root / "sub").mkdir()
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    assert resolve_in_input_dir("a.mp4", root) == (root / "a.mp4").resolve()
    assert resolve_in_input_dir("a.mp4 [input]", root) == (root / "a.mp4").resolve()
    assert resolve_in_input_dir("sub/../a.mp4", root) == (root / "a.mp4").resolve()
    for bad in ("../secret.mp4", "sub/../../secret.mp4", str(outside), "/etc/passwd"):
        with pytest.raises(VideoLoadError, match="outside ComfyUI's input folder; put the file in"):
            resolve_in_input_dir(bad, root)
    os.symlink(outside, root / "link.mp4")
    with pytest.raises(VideoLoadError, match=r"link\.mp4.*outside"):
        resolve_in_input_dir("link.mp4", root)
    os.symlink(tmp_path, root / "linkdir")
    with pytest.raises(VideoLoadError, match="outside"):
        resolve_in_input_dir("linkdir/secret.mp4", root)
    os.symlink(root / "a.mp4", root / "inner.mp4")  # a link that stays inside is fine
    assert resolve_in_input_dir("inner.mp4", root) == (root / "a.mp4").resolve()
    with pytest.raises(VideoLoadError, match="no video selected"):
        resolve_in_input_dir("", root)


def test_list_inputs(tmp_path, clips):
    root = tmp_path / "input"
    root.mkdir()
    for n in ("b.mp4", "a.webm", "c.MOV", "notes.txt", "pic.png", ".hidden.mp4"):
        (root / n).write_bytes(b"x")
    shutil.copytree(clips / "car-turn", root / "car-turn")
    (root / "empty_dir").mkdir()
    (root / "txt_dir").mkdir()
    (root / "txt_dir" / "a.txt").write_text("x")
    assert list_inputs(root) == ["a.webm", "b.mp4", "c.MOV", "car-turn"]
    assert list_inputs(tmp_path / "missing") == []


def test_change_signature(tmp_path, clips):
    p = tmp_path / "v.mp4"
    p.write_bytes(b"first")
    s1 = change_signature(p)
    assert change_signature(p) == s1  # nothing touched, nothing changed
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1_000_000))
    assert change_signature(p) != s1  # touched (same bytes): re-run, as core LoadImage does
    s2 = change_signature(p)
    mtime = p.stat().st_mtime_ns
    p.write_bytes(b"second, longer")
    os.utime(p, ns=(mtime, mtime))  # same mtime, other size
    assert change_signature(p) != s2
    d = tmp_path / "frames"
    shutil.copytree(clips / "car-turn", d)
    sd = change_signature(d)
    assert change_signature(d) == sd
    (d / "00003.png").write_bytes((d / "00004.png").read_bytes())
    assert change_signature(d) != sd
    sd = change_signature(d)
    (d / "00004.png").unlink()
    assert change_signature(d) != sd
    with pytest.raises(VideoLoadError):
        change_signature(tmp_path / "missing.mp4")
