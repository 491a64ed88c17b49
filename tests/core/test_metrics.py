"""Reconstruction and temporal-consistency metrics, and their reports."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from comfyui_stem.stem_core.metrics import (
    PSNR_CAP_DB,
    format_report,
    frame_difference_per_frame,
    optical_flow,
    plot_curves_png,
    psnr_per_frame,
    report_json,
    ssim_per_frame,
    summarize,
    warp_error_per_frame,
)


def random_frames(n=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


def smooth_texture(h, w, seed=0):
    rng = np.random.RandomState(seed)
    tex = cv2.GaussianBlur(rng.rand(h, w, 3).astype(np.float32), (0, 0), 2.0)
    return (tex - tex.min()) / (tex.max() - tex.min())


def translating_clip(n=6, h=96, w=128, dx=3, dy=1):
    """A textured window panning over a larger texture: pure, known motion."""
    tex = smooth_texture(h + 40 + n * dy, w + 40 + n * dx)
    frames = [tex[20 + i * dy:20 + i * dy + h, 20 + i * dx:20 + i * dx + w] for i in range(n)]
    return torch.from_numpy(np.stack(frames))


def static_clip(n=5, h=64, w=80):
    tex = torch.from_numpy(smooth_texture(h, w, seed=3))
    return tex.unsqueeze(0).repeat(n, 1, 1, 1)


# ---------------------------------------------------------------------------------------- PSNR/SSIM


def test_psnr_identical_is_cap():
    a = random_frames()
    p = psnr_per_frame(a, a.clone())
    assert p.shape == (4,)
    assert torch.all(p == PSNR_CAP_DB)
    assert all(math.isfinite(x) for x in p.tolist())


def test_psnr_known_mse():
    a = torch.full((3, 16, 16, 3), 0.5)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1] += 0.01  # MSE 1e-4 -> 40 dB
    p = psnr_per_frame(b, a)
    assert p[0].item() == pytest.approx(20.0, abs=1e-4)
    assert p[1].item() == pytest.approx(40.0, abs=1e-3)
    assert p[2].item() == PSNR_CAP_DB
    # data_range scales the peak: same difference on a 0..255 scale
    assert psnr_per_frame(b * 255, a * 255, data_range=255.0)[0].item() == pytest.approx(20.0, abs=1e-3)


def test_ssim_identical_is_one_and_decreases_with_noise():
    a = torch.from_numpy(np.stack([smooth_texture(48, 64, s) for s in range(3)]))
    assert torch.allclose(ssim_per_frame(a, a.clone()), torch.ones(3, dtype=torch.float64), atol=1e-5)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(a.shape, generator=g)
    scores = [ssim_per_frame((a + s * noise).clamp(0, 1), a).mean().item() for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2], scores


def test_shape_mismatch_and_empty_raise_clear_errors():
    a, b = random_frames(8, 64, 64), random_frames(9, 64, 64)
    with pytest.raises(ValueError, match=r"reconstruction has 8 frames of 64x64 but source has 9 frames of 64x64; "
                                         r"pass the same frames"):
        psnr_per_frame(a, b)
    with pytest.raises(ValueError, match="resize"):
        ssim_per_frame(random_frames(2, 64, 64), random_frames(2, 48, 64))
    with pytest.raises(ValueError, match="edited has 2 frames"):
        warp_error_per_frame(random_frames(2), random_frames(3))
    with pytest.raises(ValueError, match="empty"):
        psnr_per_frame(torch.zeros(0, 8, 8, 3), torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match="single picture"):
        psnr_per_frame(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_per_frame(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))


# ---------------------------------------------------------------------------------------- flow, warp


def test_optical_flow_recovers_translation():
    clip = translating_clip(n=2, dx=3, dy=1)
    for method in ("dis", "farneback"):
        flow = optical_flow(clip[0].numpy(), clip[1].numpy(), method)
        assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
        centre = flow[20:-20, 20:-20]
        # the window moves +3, +1 over the texture, so content moves -3, -1 in the frame
        assert np.median(centre[..., 0]) == pytest.approx(-3.0, abs=0.3), method
        assert np.median(centre[..., 1]) == pytest.approx(-1.0, abs=0.3), method
    with pytest.raises(ValueError, match="unknown optical flow method"):
        optical_flow(clip[0].numpy(), clip[1].numpy(), "raft")


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_warp_error_static_flicker_and_name(method):
    src = static_clip()
    errors, name = warp_error_per_frame(src, src, method=method)
    assert errors.shape == (4,)
    assert errors.abs().max().item() == 0.0
    assert ("DIS" if method == "dis" else "Farneback") in name

    def flicker(amount):
        edited = src.clone()
        edited[1::2] = (edited[1::2] * (1 - amount)).clamp(0, 1)
        return warp_error_per_frame(edited, src, method=method)[0].mean().item()

    small, large = flicker(0.05), flicker(0.2)
    assert 0 < small < large


def test_warp_error_with_flow_beats_naive_difference_on_translation():
    clip = translating_clip()
    naive = frame_difference_per_frame(clip)
    for method in ("dis", "farneback"):
        for masked in (True, False):
            warp, name = warp_error_per_frame(clip, clip, method=method, occlusion_mask=masked)
            assert warp.shape == naive.shape == (5,)
            assert warp.max().item() < 0.1 * naive.min().item(), (method, masked, warp, naive)
            assert ("occlusion-masked" in name) == masked


def test_warp_error_single_frame_is_empty():
    errors, _ = warp_error_per_frame(static_clip(1), static_clip(1))
    assert errors.numel() == 0


# ---------------------------------------------------------------------------------------- reports


def metric_dict():
    return {
        "psnr": torch.tensor([30.0, PSNR_CAP_DB, 25.0]),
        "ssim": torch.tensor([0.9, 1.0, 0.8]),
        "warp_error": torch.tensor([0.002, 0.004]),
    }


def test_summarize():
    s = summarize(metric_dict())
    assert s["psnr"]["max"] == PSNR_CAP_DB and s["psnr"]["min"] == 25.0
    assert s["ssim"]["mean"] == pytest.approx(0.9)
    assert s["warp_error"]["count"] == 2
    assert summarize({"x": [float("nan")]})["x"]["mean"] is None


def test_format_report_and_json():
    text = format_report(metric_dict(), flow_name="OpenCV DIS optical flow (preset MEDIUM)")
    assert "3 frames" in text
    assert "PSNR" in text and "SSIM" in text and "OpenCV DIS" in text
    assert "x1e-3" in text and "3.000" in text  # warp error mean 0.003 shown x1e-3
    lines = text.splitlines()
    row0 = [l for l in lines if l.strip().startswith("0 ")][0]
    assert row0.rstrip().endswith("-")  # warp error starts at frame 1

    rep = report_json(metric_dict(), flow_name="dis", meta={"video": "clip.mp4"})
    dumped = json.dumps(rep, allow_nan=False)
    assert json.loads(dumped)["metrics"]["warp_error"]["first_frame"] == 1
    assert rep["metrics"]["psnr"]["per_frame"] == [30.0, PSNR_CAP_DB, 25.0]
    assert rep["frames"] == 3 and rep["meta"]["video"] == "clip.mp4"
    rep = report_json({"psnr": [float("inf"), 20.0]})
    assert rep["metrics"]["psnr"]["per_frame"] == [None, 20.0]


def test_plot_writes_readable_png(tmp_path):
    path = tmp_path / "sub" / "curves.png"
    rgb = plot_curves_png({k: v.tolist() for k, v in metric_dict().items()}, str(path), "metrics",
                          size=(640, 400), x_starts={"warp_error": 1})
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (400, 640, 3)
    assert rgb.shape == (400, 640, 3) and rgb.dtype == np.uint8
    # lines in colour were drawn (not only a white canvas with black text)
    saturation = img.max(-1).astype(int) - img.min(-1).astype(int)
    assert (saturation > 100).sum() > 200
    # degenerate inputs still draw
    plot_curves_png({"flat": [1.0, 1.0], "one": [2.0], "none": []}, str(tmp_path / "d.png"), "edge cases")
    assert cv2.imread(str(tmp_path / "d.png")).shape == (450, 800, 3)
