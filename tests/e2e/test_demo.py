"""`make demo` (scripts/demo.py) as a newcomer runs it: it starts ComfyUI headless, makes the synthetic clip, falls
back to the tiny test model when the workflow's checkpoint is absent and says so, and writes the video and a
metrics report. For Videoshop it also makes a stand-in edited first frame when none is given."""
import subprocess
import sys

import pytest

from tests.conftest import COMFYUI_DIR, REPO


@pytest.mark.parametrize("workflow", ["stem_reconstruction", "videoshop_edit_first_frame"])
def test_demo_runs_headless_and_writes_video_and_report(tmp_path, workflow):
    from comfyui_stem.stem_core.video_io import load_video
    out = tmp_path / "demo_output"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--comfyui", str(COMFYUI_DIR),
                          "--out", str(out), "--workflow", workflow, "--frames", "4", "--size", "64x64",
                          "--steps", "2"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    videos = sorted(out.rglob("*.mp4"))
    assert len(videos) == 1, videos
    clip = load_video(videos[0])
    assert clip.frame_count == 4 and (clip.width, clip.height) == (64, 64)
    report = (out / "metrics_report.txt").read_text()
    assert report.startswith("NOTE: the workflow's checkpoint was not found") and "TINY RANDOM TEST MODEL" in report
    assert "psnr" in report.lower()
    if workflow.startswith("videoshop"):
        assert "green square" in res.stdout  # the stand-in edit is announced, never passed off as the user's
