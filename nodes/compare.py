"""STEM Stitch Videos: two to four IMAGE batches side by side in one video, for comparisons such as
source | per-frame | STEM. (Current ComfyUI has a core Image Stitch node; the pinned 2024-03 host has none.)"""
import torch

from ..stem_core.errors import STEMError
from . import host

SLOT_NAMES = ("left", "right", "third", "fourth")


def stitch_side_by_side(videos, names, spacing: int):
    """IMAGE batches [N, H_i, W_i, C] -> one batch [N, H_0, sum of widths + gaps, 3]. Every video is resized
    (aspect kept, bilinear) to the first one's height, its width rounded to an even number; ``spacing`` white
    columns between neighbours."""
    first = videos[0]
    for video, name in zip(videos, names):
        if not torch.is_tensor(video) or video.ndim != 4 or video.shape[0] < 1 or video.shape[-1] < 3:
            raise STEMError("expected an IMAGE batch [frames, H, W, 3]", input_name=name,
                            fix="connect the IMAGE output of a VAE Decode or a video loader")
        if video.shape[0] != first.shape[0]:
            raise STEMError(f"has {video.shape[0]} frames but {names[0]} has {first.shape[0]}", input_name=name,
                            fix="stitch videos of the same frame selection (same frame_load_cap / "
                                "select_every_nth in the loader)")
    if spacing < 0:
        raise STEMError(f"must be >= 0, got {spacing}", input_name="spacing")
    height = int(first.shape[1])
    parts = []
    for k, video in enumerate(videos):
        video = video[..., :3].to(first.device, torch.float32)
        if int(video.shape[1]) != height:
            width = max(2, 2 * round(video.shape[2] * height / video.shape[1] / 2))
            video = torch.nn.functional.interpolate(video.movedim(-1, 1), size=(height, width), mode="bilinear",
                                                    align_corners=False).movedim(1, -1).clamp(0, 1)
        if k and spacing:
            parts.append(torch.ones(video.shape[0], height, spacing, 3, dtype=video.dtype, device=video.device))
        parts.append(video)
    return torch.cat(parts, dim=2)


class STEMVideoStitch:
    TITLE = "STEM Stitch Videos (side by side)"
    CATEGORY = host.category("video")
    DESCRIPTION = ("Puts two to four videos of the same frame count next to each other (left to right) in one "
                   "video, each scaled to the first one's height: source | per-frame | STEM comparisons.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The videos side by side [frames, height, total width, 3].",)
    FUNCTION = "stitch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "left": ("IMAGE", {"tooltip": "The first (leftmost) video; its height is the stitched height."}),
            "right": ("IMAGE", {"tooltip": "The next video to its right."}),
            "spacing": ("INT", {"default": 4, "min": 0, "max": 256, "step": 2, "tooltip":
                        "White pixel columns between the videos (even keeps H.264's even width)."}),
        }, "optional": {
            "third": ("IMAGE", {"tooltip": "A third video (optional)."}),
            "fourth": ("IMAGE", {"tooltip": "A fourth video (optional)."}),
        }}

    def stitch(self, left, right, spacing, third=None, fourth=None):
        named = [(v, n) for v, n in zip((left, right, third, fourth), SLOT_NAMES) if v is not None]
        return (stitch_side_by_side([v for v, _ in named], [n for _, n in named], int(spacing)),)


NODE_CLASS_MAPPINGS = {"STEMVideoStitch": STEMVideoStitch}
