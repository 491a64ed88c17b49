"""The real clips of ../shared/data/videos decode as their SOURCES.md documents (frame counts, sizes, rates,
audio, odd size handling). Skipped with a visible reason on a clone without ../shared; every property is
also checked on the synthetic stand-ins (tests/fixtures/clips.py) by tests/core/test_video_io.py."""
from fractions import Fraction

import pytest

from comfyui_stem.stem_core.video_io import load_video


@pytest.mark.parametrize("name, frames, size, fps, audio", [
    ("wolf.mp4", 40, (512, 512), 20.0, False),
    ("truck.mp4", 21, (512, 512), 10.0, False),
    ("man-skiing.mp4", 91, (720, 720), float(Fraction(30000, 1001)), True),
    ("car-turn", 8, (512, 512), 8.0, False),
])
def test_real_clip_facts(shared_videos, name, frames, size, fps, audio):
    clip = load_video(shared_videos / name, load_audio_track=audio)
    assert clip.frame_count == frames and clip.frames.shape[0] == frames
    assert (clip.width, clip.height) == size, clip.describe()  # 718 -> 720 (resize to the nearest multiple of 8)
    assert abs(clip.fps - fps) < 1e-6
    assert (clip.audio is not None) == audio


def test_real_odd_size_crop(shared_videos):
    clip = load_video(shared_videos / "man-skiing.mp4", size_mode="crop", frame_load_cap=2, load_audio_track=False)
    assert (clip.width, clip.height) == (712, 712)
