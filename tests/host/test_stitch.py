"""STEM Stitch Videos: the comparison video source | per-frame | STEM."""
import pytest
import torch

from comfyui_stem.stem_core.errors import STEMError


def test_videos_side_by_side(node):
    torch.manual_seed(0)
    left, right, third = torch.rand(3, 16, 24, 3), torch.rand(3, 16, 24, 3), torch.rand(3, 32, 32, 3)
    out = node("STEMVideoStitch").stitch(left, right, 4, third=third)[0]
    assert out.shape == (3, 16, 24 + 4 + 24 + 4 + 16, 3)
    assert torch.equal(out[:, :, :24], left) and torch.equal(out[:, :, 28:52], right)
    assert torch.all(out[:, :, 24:28] == 1)  # white spacing
    assert torch.allclose(out[:, :, 56:].mean(), third.mean(), atol=0.02)  # third scaled to half its size


def test_frame_counts_must_match(node):
    with pytest.raises(STEMError, match="right: has 2 frames but left has 3"):
        node("STEMVideoStitch").stitch(torch.rand(3, 8, 8, 3), torch.rand(2, 8, 8, 3), 0)
