"""STEM Video Metrics inside the pinned host: the report as STRING and `ui.text`, the per-frame curve as an IMAGE
output equal to the PNG shown on the node."""
import os

import numpy as np
import torch
from PIL import Image


def _video(n=5, h=32, w=48, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, w).view(1, 1, w, 1).expand(n, h, w, 3).clone()
    x = (x + torch.arange(n).view(n, 1, 1, 1) * 0.02) % 1.0
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_report_and_curve_image(comfy_host, node):
    source = _video()
    # a result that gets noisier frame by frame
    result = torch.stack([_video(noise=0.02 * (k + 1), seed=k)[k] for k in range(5)])
    out = node("STEMVideoMetrics").measure(source, result, True, "dis", "probe", "STEM/test_metrics")
    text, curve = out["result"]
    assert out["ui"]["text"] == [text] and "psnr" in text.lower() and "probe" in text
    assert curve.shape == (1, 450, 800, 3) and curve.dtype == torch.float32
    assert 0.0 <= float(curve.min()) and float(curve.max()) <= 1.0 and float(curve.std()) > 0.05
    shown = out["ui"]["images"][0]
    png = os.path.join(comfy_host["folder_paths"].get_output_directory(), shown["subfolder"], shown["filename"])
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(pixels, (curve[0] * 255).round().byte().numpy())  # the IMAGE is the preview


def test_returns_declared(comfy_host):
    cls = comfy_host["nodes"].NODE_CLASS_MAPPINGS["STEMVideoMetrics"]
    assert cls.RETURN_TYPES == ("STRING", "IMAGE") and cls.RETURN_NAMES == ("report", "curve")
    assert len(cls.OUTPUT_TOOLTIPS) == 2
