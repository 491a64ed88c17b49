"""example_workflows/ (what a current frontend's Templates menu and the registry read), workflows/ui/ and
workflows/api/ are exactly what scripts/build_workflows.py writes from the real node classes, and the layout
reads left to right: groups Load -> Invert -> Edit/Reconstruct -> Output, every wire runs rightwards, no node
overlaps another, every node sits in a group frame, no wire runs under a node, the fewest crossings. `make check-workflows` runs this file."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

import build_workflows as bw  # noqa: E402
from thumbnails import SIZE, render_thumbnail  # noqa: E402
from workflow_format import (FRONTEND_ONLY, crossings, fewest_crossings, node_box, overlaps, ui_wires,  # noqa: E402
                             wires_through_nodes)

NAMES = sorted(bw.GRAPHS)
EXAMPLES = REPO / "example_workflows"
FIX = "run `make workflows` (scripts/build_workflows.py) and commit the result"


@pytest.fixture(scope="module")
def built(comfy_host):
    classes = comfy_host["nodes"].NODE_CLASS_MAPPINGS
    return {name: bw.render(classes, name) for name in NAMES}


def test_the_folders_hold_exactly_the_builders_workflows():
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(NAMES), FIX
    assert {p.stem for p in EXAMPLES.glob("*.jpg")} == set(NAMES), f"one .jpg thumbnail per workflow; {FIX}"
    assert {p.stem for p in (REPO / "workflows" / "ui").glob("*.json")} == set(NAMES), FIX
    # current hosts list every json directly in example_workflows/ and in workflows/ as a template: none may
    # lie directly in workflows/, or each example is listed twice there
    assert not list((REPO / "workflows").glob("*.json")), f"json files directly in workflows/; {FIX}"
    assert {p.stem for p in (REPO / "workflows" / "api").glob("*.json")} == set(NAMES), FIX


@pytest.mark.parametrize("name", NAMES)
def test_files_match_the_builder(built, name):
    ui, api, _ = built[name]
    assert json.loads((EXAMPLES / f"{name}.json").read_text()) == ui, f"example_workflows/{name}.json drifted; {FIX}"
    assert json.loads((REPO / "workflows" / "ui" / f"{name}.json").read_text()) == ui, f"workflows/ui/{name}.json; {FIX}"
    assert json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text()) == api, \
        f"workflows/api/{name}.json; {FIX}"


@pytest.mark.parametrize("name", NAMES)
def test_thumbnail_is_the_drawn_graph(built, name):
    """The .jpg is the graph drawn from the workflow itself (deterministic; no picture claims to be an edit)."""
    shipped = Image.open(EXAMPLES / f"{name}.jpg")
    assert shipped.format == "JPEG" and shipped.size == SIZE
    drawn = np.asarray(render_thumbnail(built[name][0], name), dtype=np.float32)
    assert float(np.abs(np.asarray(shipped.convert("RGB"), dtype=np.float32) - drawn).mean()) < 2.0, FIX


@pytest.mark.parametrize("name", NAMES)
def test_layout_reads_left_to_right_in_groups(built, name):
    ui = built[name][0]
    titles = [g["title"] for g in ui["groups"]]
    assert titles[0] == "Load" and titles[-1] == "Output" and ("Invert" in titles), titles
    frames = [g["bounding"] for g in ui["groups"]]
    for (x0, _, w0, _), (x1, _, _, _) in zip(frames, frames[1:]):
        assert x0 + w0 <= x1, f"{name}: group frames overlap or run right to left: {titles}"
    nodes = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        bx0, by0, bx1, by1 = node_box(node)
        inside = [g["title"] for g in ui["groups"] if g["bounding"][0] <= bx0 and bx1 <= g["bounding"][0] +
                  g["bounding"][2] and g["bounding"][1] <= by0 and by1 <= g["bounding"][1] + g["bounding"][3]]
        assert len(inside) == 1, f"{name}: node {node['id']} ({node['type']}) lies in groups {inside}"
    for _lid, src, _ss, dst, _ds, _typ in ui["links"]:
        assert nodes[src]["pos"][0] + nodes[src]["size"][0] < nodes[dst]["pos"][0], \
            f"{name}: the wire {src} -> {dst} runs right to left"
    assert not overlaps(ui), f"{name}: overlapping nodes {overlaps(ui)}"


@pytest.mark.parametrize("name", NAMES)
def test_wires_never_run_under_nodes_and_cross_least(comfy_host, built, name):
    """As the editor draws the wires: none runs under a node it does not connect (litegraph draws wires behind
    nodes, so one would seem to enter it), and they cross no more often than the fewest any order of the
    workflow's columns allows (an integer program over every order; some crossings cannot go in a left-to-right
    drawing, see workflow_format.layout)."""
    ui = built[name][0]
    wires = ui_wires(ui)
    under = wires_through_nodes(wires, {n["id"]: node_box(n) for n in ui["nodes"]}, [(lk[1], lk[3]) for lk in ui["links"]])
    assert not under, f"{name}: wires under nodes (link index, node id): {under}"
    graph, specs = bw.described(comfy_host["nodes"].NODE_CLASS_MAPPINGS, name)
    drawn, least = len(crossings(wires)), fewest_crossings(graph, specs, bw.GROUP_ORDER)
    print(f"{name}: {drawn} crossings drawn, {least} at least for its columns; "
          f"{sum(n['type'] == 'Reroute' for n in ui['nodes'])} reroutes")
    assert drawn <= least, f"{name}: {drawn} crossings drawn where its columns allow {least}"


def test_crossing_counter():
    crossing = [("a", [(0, 0), (10, 10)]), ("b", [(0, 10), (10, 0)])]
    parallel = [("a", [(0, 0), (10, 0)]), ("b", [(0, 5), (10, 5)])]
    shared = [("a", [(0, 0), (10, 10)]), ("a", [(0, 0), (10, -10)])]  # one output's wires share their start
    assert crossings(crossing) == [(0, 1)] and crossings(parallel) == [] and crossings(shared) == []


@pytest.mark.parametrize("name", NAMES)
def test_each_workflow_says_which_clip_it_uses(built, name):
    ui, api, _ = built[name]
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert notes, f"{name}: no Note node"
    text = " ".join(n["widgets_values"][0] for n in notes)
    assert bw.DEMO_VIDEO in text and "make demo" in text
    loaders = {"STEMVideoLoad": "video", "VHS_LoadVideo": "video", "LoadVideo": "file"}
    videos = [v["inputs"].get(loaders[v["class_type"]]) for v in api.values() if v["class_type"] in loaders]
    assert videos and all(v == bw.DEMO_VIDEO for v in videos), f"{name}: loaders read {videos}"
    assert not [n for n in api.values() if n["class_type"] in FRONTEND_ONLY]


def test_comparison_stitches_source_per_frame_and_stem(built):
    api = built["tokenflow_side_by_side"][1]
    stitch = next(n for n in api.values() if n["class_type"] == "STEMVideoStitch")
    left, right, third = (stitch["inputs"][k][0] for k in ("left", "right", "third"))
    assert api[left]["class_type"] == "STEMVideoLoad"
    sampler_of = {k: api[api[k]["inputs"]["samples"][0]] for k in (right, third)}
    inversion_of = {k: api[v["inputs"]["trajectory"][0]] for k, v in sampler_of.items()}
    assert api[inversion_of[right]["inputs"]["model"][0]]["class_type"] == "CheckpointLoaderSimple"  # per-frame
    assert api[inversion_of[third]["inputs"]["model"][0]]["class_type"] == "STEMBasisEstimate"  # STEM
    saves = [n for n in api.values() if n["class_type"] == "STEMSaveVideo"]
    assert any(s["inputs"]["images"][0] == next(k for k, v in api.items() if v is stitch) for s in saves)
