"""The editing workflows (STEM-TokenFlow, the DDIM-vs-STEM side-by-side, STEM-FateZero) through a real
ComfyUI server with the tiny model on a shared clip: they complete and write videos and finite metrics."""
import json
import math

import pytest

from tests.e2e.conftest import load_api
from tests.e2e.test_reconstruction_server import small


def reports(result):
    return [json.loads(open(p).read()) for p in result["downloaded"] if p.endswith(".json")]


def finite_per_frame(report, metric):
    values = report["metrics"][metric]["per_frame"] if "metrics" in report else report[metric]["per_frame"]
    return bool(values) and all(v is not None and math.isfinite(v) for v in values)


@pytest.mark.parametrize("name, videos, labels", [
    ("tokenflow_stem", 1, ["STEM-TokenFlow edit"]),
    ("tokenflow_side_by_side", 1, ["TokenFlow (per-frame DDIM inversion)", "STEM-TokenFlow (STEM inversion)"]),
    ("fatezero_stem", 1, ["STEM-FateZero edit"]),
])
def test_editing_workflow_end_to_end(server_input, run, tmp_path, name, videos, labels):
    wf = small(load_api(name), server_input("wolf.mp4"), frames=5, steps=3)
    result = run(wf, out_dir=str(tmp_path), timeout=900)
    mp4s = [p for p in result["downloaded"] if p.endswith(".mp4")]
    assert len(mp4s) == videos
    if name == "tokenflow_side_by_side":  # one video: source | per-frame | STEM, 4 white columns between
        import av
        with av.open(mp4s[0]) as container:
            assert container.streams.video[0].codec_context.width == 3 * 64 + 2 * 4
    found = {r.get("meta", {}).get("label"): r for r in reports(result)}
    for label in labels:
        assert label in found, f"no metrics report for {label}: {list(found)}"
        for metric in ("psnr", "ssim", "warp_error"):
            assert finite_per_frame(found[label], metric), (label, metric)
    if name == "fatezero_stem":  # the blend mask preview
        assert any(f["type"] == "temp" and f["filename"].endswith(".png") for f in result["files"])
