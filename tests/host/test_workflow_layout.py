"""scripts/workflow_format.layout on small graphs of core nodes: the order of a column comes from the wires (not
the node ids), a long wire goes around the nodes in its way through Reroutes, and the API prompt the editor would
queue looks through the Reroutes."""
from workflow_format import (build_ui, crossings, fewest_crossings, layout, node_box, node_spec, ui_to_api,  # noqa: E402
                             ui_wires, wires_through_nodes)


def _n(node_id, class_type, group, **inputs):
    return {"id": node_id, "class_type": class_type, "title": None, "group": group, "inputs": inputs}


def _laid_out(comfy_host, graph):
    classes = comfy_host["nodes"].NODE_CLASS_MAPPINGS
    specs = {g["class_type"]: node_spec(classes[g["class_type"]]) for g in graph}
    placed, groups = layout(graph, specs, ("Load", "Edit", "Output"))
    ui = build_ui(placed, specs, groups)
    return ui, specs


def test_order_follows_the_wires_and_long_wires_go_around_nodes(comfy_host):
    # by id, the VAE's consumer (10) would sit above the CLIP's (11): the checkpoint's CLIP (slot 1) and VAE
    # (slot 2) wires would cross; 13 takes the CLIP two columns to the right, past the Edit column's nodes
    graph = [
        _n(1, "CheckpointLoaderSimple", "Load", ckpt_name="x.safetensors"),
        _n(10, "VAEDecode", "Edit", vae=[1, 2]),
        _n(11, "CLIPTextEncode", "Edit", clip=[1, 1], text="a"),
        _n(12, "PreviewImage", "Output", images=[10, 0]),
        _n(13, "CLIPTextEncode", "Output", clip=[1, 1], text="b"),
    ]
    ui, specs = _laid_out(comfy_host, graph)
    wires = ui_wires(ui)
    assert crossings(wires) == [] and fewest_crossings(graph, specs, ("Load", "Edit", "Output")) == 0
    assert wires_through_nodes(wires, {n["id"]: node_box(n) for n in ui["nodes"]},
                               [(lk[1], lk[3]) for lk in ui["links"]]) == []
    y = {n["id"]: n["pos"][1] for n in ui["nodes"]}
    assert y[11] < y[10], "the CLIP's consumer goes above the VAE's"
    reroutes = [n for n in ui["nodes"] if n["type"] == "Reroute"]
    feeding_13 = next(lk for lk in ui["links"] if lk[3] == 13)
    assert reroutes and feeding_13[1] in {r["id"] for r in reroutes}, "the long CLIP wire runs through a Reroute"
    api = ui_to_api(ui, specs)
    assert api["13"]["inputs"]["clip"] == ["1", 1] and "Reroute" not in {v["class_type"] for v in api.values()}


def test_a_straight_run_needs_no_reroute(comfy_host):
    """The MODEL wire runs level from the checkpoint past the Edit column to KSampler: no Reroute stays on it."""
    graph = [
        _n(1, "CheckpointLoaderSimple", "Load", ckpt_name="x.safetensors"),
        _n(10, "CLIPTextEncode", "Edit", clip=[1, 1], text="a"),
        _n(12, "KSampler", "Output", model=[1, 0]),
        _n(13, "ConditioningCombine", "Output", conditioning_1=[10, 0]),
    ]
    ui, _ = _laid_out(comfy_host, graph)
    assert not [n for n in ui["nodes"] if n["type"] == "Reroute"]
    wires = ui_wires(ui)
    model = next(i for i, lk in enumerate(ui["links"]) if lk[3] == 12 and lk[5] == "MODEL")
    assert ui["links"][model][1] == 1 and abs(wires[model][1][0][1] - wires[model][1][-1][1]) < 1
    assert crossings(wires) == []
    assert wires_through_nodes(wires, {n["id"]: node_box(n) for n in ui["nodes"]},
                               [(lk[1], lk[3]) for lk in ui["links"]]) == []
