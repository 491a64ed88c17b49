"""STEMVideoMetrics: PSNR/SSIM of a result against the source video, and warp error (temporal
consistency measured with the SOURCE video's optical flow). The report is returned as STRING and shown as text on
the node (web/stem_text.js); the per-frame curve is an IMAGE output and the node's image preview; both are saved
(JSON + PNG) in ComfyUI's output folder."""
import json
import os

import torch

from ..stem_core.metrics import (FLOW_METHODS, flow_method_name, format_report, plot_curves_png, report_json,
                                 video_metrics)
from . import host


class STEMVideoMetrics:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "source": ("IMAGE", {"tooltip": "The source video frames (STEM Load Video)."}),
            "result": ("IMAGE", {"tooltip": "The reconstruction or edit, same frame count and size."}),
            "warp_error": ("BOOLEAN", {"default": True, "tooltip":
                "Also measure temporal consistency: MSE between each result frame and the previous one warped "
                "by the source video's optical flow (paper Table 2, shown x1e-3)."}),
            "flow_method": (list(FLOW_METHODS), {"default": "dis", "tooltip":
                "OpenCV optical flow for the warp error (the paper uses RAFT; numbers differ between flows)."}),
            "label": ("STRING", {"default": "reconstruction", "tooltip": "A name for this result in the report."}),
            "filename_prefix": ("STRING", {"default": "STEM/metrics", "tooltip":
                "Where the JSON report and the per-frame curve PNG go, inside ComfyUI's output folder."}),
        }, "optional": {
            "notice": ("STRING", {"default": "", "tooltip":
                "Text printed at the top of the report (the runner puts the tiny test model's notice here)."}),
        }}

    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "curve")
    OUTPUT_TOOLTIPS = ("The report as text: means, minima, maxima and a per-frame table.",
                       "The per-frame curves as a picture [1, 450, 800, 3] (each metric scaled to its own range; "
                       "the legend gives the real values).")
    FUNCTION = "measure"
    OUTPUT_NODE = True
    CATEGORY = host.category("metrics")
    TITLE = "STEM Video Metrics (PSNR / SSIM / warp error)"
    DESCRIPTION = "Per-frame PSNR and SSIM against the source and the flow-warped temporal error, with a curve."

    def measure(self, source, result, warp_error, flow_method, label, filename_prefix, notice=None):
        per_frame, flow_name = video_metrics(source, result, warp_error, flow_method, check_interrupt=host.check_interrupt)
        notes = [notice] if notice and notice.strip() else None
        text = format_report(per_frame, flow_name=flow_name, title=f"STEM video metrics: {label}", notes=notes)
        folder, base, subfolder = host.output_path(filename_prefix)
        data = report_json(per_frame, flow_name=flow_name, meta={"label": label, "notice": notice or "",
                                                                  "flow_method": flow_method_name(flow_method)})
        with open(os.path.join(folder, base + ".json"), "w") as f:
            json.dump(data, f, indent=1)
        curves = {k: [float(x) for x in v] for k, v in per_frame.items()}
        # warp error compares frame k with k-1, so its first value belongs to frame 1
        chart = plot_curves_png(curves, os.path.join(folder, base + ".png"), title=f"{label}: per-frame metrics",
                                x_starts={"warp_error": 1})
        files = [{"filename": base + ".png", "subfolder": subfolder, "type": "output"}]
        return {"ui": {"text": [text], "images": files,
                       "reports": [{"filename": base + ".json", "subfolder": subfolder, "type": "output"}]},
                "result": (text, torch.from_numpy(chart).float().div_(255.0).unsqueeze(0))}


NODE_CLASS_MAPPINGS = {"STEMVideoMetrics": STEMVideoMetrics}
