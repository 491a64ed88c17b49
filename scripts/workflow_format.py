"""UI-format <-> API-format workflow conversion, following the pinned frontend's rules.

The editor (web/scripts/app.js, widgets.js of ComfyUI 2024-03) makes a widget for INT, FLOAT,
STRING, BOOLEAN and combo (list) inputs, in INPUT_TYPES order (required, then optional), and a
socket for every other type. INT inputs named `seed`/`noise_seed` (or with control_after_generate)
get an extra "control after generate" widget right after them. Widgets of inputs marked forceInput
become sockets but keep their value in widgets_values.

`node_specs` describes classes as /object_info does (input order, widget or socket, outputs).
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def input_specs(input_types: dict):
    """[(name, type, options, is_widget, has_control)] in the editor's order."""
    specs = []
    for section in ("required", "optional"):
        for name, data in (input_types.get(section) or {}).items():
            typ = data[0]
            opts = data[1] if len(data) > 1 and isinstance(data[1], dict) else {}
            is_widget = isinstance(typ, list) or typ in WIDGET_TYPES
            has_control = is_widget and ((typ == "INT" and name in ("seed", "noise_seed"))
                                         or bool(opts.get("control_after_generate")))
            specs.append((name, "COMBO" if isinstance(typ, list) else typ, opts, is_widget, has_control))
    return specs


def node_spec(cls) -> dict:
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    names = list(getattr(cls, "RETURN_NAMES", outputs))
    return {"inputs": input_specs(cls.INPUT_TYPES()), "outputs": list(zip(names, outputs)),
            "title": getattr(cls, "TITLE", None)}


def build_ui(graph: list, specs: dict) -> dict:
    """graph: [{"id", "class_type", "inputs": {name: value or [node_id, slot]}, "title"?, "pos"?}]."""
    links, nodes = [], []
    out_links = {}  # (node id, slot) -> [link ids]
    for order, n in enumerate(graph):
        spec = specs[n["class_type"]]
        ui_inputs, widgets = [], []
        for name, typ, opts, is_widget, has_control in spec["inputs"]:
            value = n["inputs"].get(name, opts.get("default"))
            is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[0], (int, str)) \
                and isinstance(value[1], int) and not (typ == "COMBO")
            if is_widget:
                if is_link or opts.get("forceInput"):
                    entry = {"name": name, "type": typ, "link": None, "widget": {"name": name}}
                    if is_link:
                        lid = len(links) + 1
                        links.append([lid, int(value[0]), value[1], int(n["id"]), len(ui_inputs), typ])
                        out_links.setdefault((int(value[0]), value[1]), []).append(lid)
                        entry["link"] = lid
                    ui_inputs.append(entry)
                    value = opts.get("default", "" if typ == "STRING" else 0) if is_link else value
                widgets.append("" if value is None and typ == "STRING" else value)
                if has_control:
                    widgets.append("fixed")
            else:
                entry = {"name": name, "type": typ, "link": None}
                if value is not None:
                    lid = len(links) + 1
                    links.append([lid, int(value[0]), value[1], int(n["id"]), len(ui_inputs), typ])
                    out_links.setdefault((int(value[0]), value[1]), []).append(lid)
                    entry["link"] = lid
                ui_inputs.append(entry)
        x, y = n.get("pos", (40 + 400 * (order % 5), 60 + 430 * (order // 5)))
        node = {"id": int(n["id"]), "type": n["class_type"], "pos": [x, y], "size": [360, 200], "flags": {},
                "order": order, "mode": 0, "inputs": ui_inputs, "outputs": [],
                "properties": {"Node name for S&R": n["class_type"]}, "widgets_values": widgets}
        if n.get("title"):
            node["title"] = n["title"]
        nodes.append(node)
    for node in nodes:
        spec = specs[node["type"]]
        node["outputs"] = [{"name": name, "type": typ, "links": out_links.get((node["id"], i), []), "slot_index": i}
                           for i, (name, typ) in enumerate(spec["outputs"])]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(ui: dict, specs: dict) -> dict:
    """The API prompt the editor would queue for this UI graph (muted/bypassed nodes dropped)."""
    link_src = {l[0]: [str(l[1]), l[2]] for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        spec = specs[node["type"]]
        linked = {i["name"]: link_src[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs, pos = {}, 0
        for name, typ, opts, is_widget, has_control in spec["inputs"]:
            if is_widget:
                if pos >= len(values):
                    raise ValueError(f"node {node['id']} ({node['type']}): widgets_values too short at '{name}'")
                value = values[pos]
                pos += 2 if has_control else 1
                inputs[name] = linked.get(name, value)
                if opts.get("forceInput") and name not in linked:
                    inputs.pop(name)
            elif name in linked:
                inputs[name] = linked[name]
        entry = {"inputs": inputs, "class_type": node["type"]}
        entry["_meta"] = {"title": node.get("title") or spec.get("title") or node["type"]}
        api[str(node["id"])] = entry
    return api
