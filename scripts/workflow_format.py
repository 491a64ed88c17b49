"""UI-format <-> API-format workflow conversion, following the pinned frontend's rules, and the layout of the
shipped workflows (left to right in groups, no crossing wires).

The editor (web/scripts/app.js, widgets.js of ComfyUI 2024-03) makes a widget for INT, FLOAT,
STRING, BOOLEAN and combo (list) inputs, in INPUT_TYPES order (required, then optional), and a
socket for every other type. INT inputs named `seed`/`noise_seed` (or with control_after_generate)
get an extra "control after generate" widget right after them. Widgets of inputs marked forceInput
become sockets but keep their value in widgets_values. Frontend-only nodes (Note, Reroute, ...) never reach
the API prompt. VideoHelperSuite's nodes save their widget values as an object {name: value}.

`node_specs` describes classes as /object_info does (input order, widget or socket, outputs).

Layout (``layout``): every node of a graph description names its group ("Load", "Invert", "Edit", "Output");
groups are columns from left to right, a group holds as many sub-columns as its longest internal chain, nodes
are ordered inside their column to remove wire crossings (wires drawn as litegraph draws them: a cubic Bezier
from the output slot to the input slot with horizontal handles a quarter of their distance long), and the
groups get frames with titles. ``wires`` and ``crossings`` are what the tests check, here and in the browser.
"""
from __future__ import annotations

import itertools
import math

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
DICT_WIDGET_PREFIX = "VHS_"  # VideoHelperSuite serialises widgets_values as {name: value}

# litegraph's geometry (web/lib/litegraph.core.js of the pinned host; current frontends keep these values)
TITLE_H, SLOT_H, WIDGET_H = 30, 20, 20
GROUP_TITLE_H, GROUP_PAD = 44, 20
COLUMN_GAP, ROW_GAP = 70, 50
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"
GROUP_COLORS = {"Load": "#3f789e", "Invert": "#8A8", "Edit": "#a1309b", "Output": "#b58b2a", "Compare": "#88A"}


def input_specs(input_types: dict):
    """[(name, type, options, is_widget, has_control)] in the editor's order."""
    specs = []
    for section in ("required", "optional"):
        for name, data in (input_types.get(section) or {}).items():
            typ = data[0]
            opts = data[1] if len(data) > 1 and isinstance(data[1], dict) else {}
            is_widget = isinstance(typ, list) or typ in WIDGET_TYPES or typ == "COMBO"  # "COMBO": v3 schema nodes
            has_control = is_widget and ((typ == "INT" and name in ("seed", "noise_seed"))
                                         or bool(opts.get("control_after_generate")))
            specs.append((name, "COMBO" if isinstance(typ, list) else typ, opts, is_widget, has_control))
    return specs


def node_spec(cls) -> dict:
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    names = list(getattr(cls, "RETURN_NAMES", outputs))
    return {"inputs": input_specs(cls.INPUT_TYPES()), "outputs": list(zip(names, outputs)),
            "title": getattr(cls, "TITLE", None)}


def spec_from_object_info(info: dict) -> dict:
    """A node spec from one /object_info entry (what the server tells the frontend)."""
    names = info.get("output_name") or info.get("output") or []
    return {"inputs": input_specs(info.get("input") or {}), "outputs": list(zip(names, info.get("output") or [])),
            "title": info.get("display_name") or info.get("name")}


def _is_link(value, typ) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (int, str)) \
        and isinstance(value[1], int) and typ != "COMBO"


# ------------------------------------------------------------------------------------------------ sizes


def _widget_height(typ, opts, linked) -> int:
    if linked:
        return 0  # a converted widget is a socket; litegraph gives it no height
    if typ == "STRING" and opts.get("multiline"):
        return 110  # DOM textarea
    return WIDGET_H + 4


def estimate_size(node: dict, spec: dict) -> list:
    """[width, height] a bit above what the editor computes for this node (litegraph's computeSize: a row of
    20 px per slot, 24 px per widget, DOM text areas taller); the editor keeps the larger of the saved and the
    computed size."""
    if node["class_type"] == "Note":
        return [380, 150]
    sockets = widgets = 0
    for name, typ, opts, is_widget, has_control in spec["inputs"]:
        value = node["inputs"].get(name, opts.get("default"))
        linked = _is_link(value, typ)
        if not is_widget:
            sockets += 1  # every non-widget input is a socket, linked or not
            continue
        if linked or opts.get("forceInput"):
            sockets += 1
        widgets += _widget_height(typ, opts, linked or opts.get("forceInput")) + (WIDGET_H + 4 if has_control else 0)
    rows = max(sockets, len(spec["outputs"]), 1)
    height = rows * SLOT_H + widgets + 8
    width = node.get("width", 340)
    return [width, int(math.ceil(height * 1.08 + 10))]


# ------------------------------------------------------------------------------------------------ UI building


def build_ui(graph: list, specs: dict, groups=None) -> dict:
    """graph: [{"id", "class_type", "inputs": {name: value or [node_id, slot]}, "title"?, "pos"?, "size"?,
    "group"?}]. Positions and sizes come from the nodes (``layout`` fills them in); ``groups`` is the UI
    "groups" list."""
    links, nodes = [], []
    out_links = {}  # (node id, slot) -> [link ids]
    by_id = {int(n["id"]): n for n in graph}

    def output_type(src, slot):
        m = by_id[int(src)]
        if m["class_type"] == "Reroute":
            return output_type(*m["inputs"][""])
        return specs[m["class_type"]]["outputs"][slot][1]

    for order, n in enumerate(graph):
        if n["class_type"] == "Note":
            nodes.append(_note(n, order))
            continue
        if n["class_type"] == "Reroute":
            src, slot = n["inputs"][""]
            typ = output_type(src, slot)
            lid = len(links) + 1
            links.append([lid, int(src), slot, int(n["id"]), 0, typ])
            out_links.setdefault((int(src), slot), []).append(lid)
            nodes.append({"id": int(n["id"]), "type": "Reroute", "pos": list(n["pos"]), "size": list(n["size"]),
                          "flags": {}, "order": order, "mode": 0, "inputs": [{"name": "", "type": "*", "link": lid}],
                          "outputs": [{"name": "", "type": typ, "links": [], "slot_index": 0}],
                          "properties": {"showOutputText": False, "horizontal": False}})
            continue
        spec = specs[n["class_type"]]
        ui_inputs, widgets = [], {} if n["class_type"].startswith(DICT_WIDGET_PREFIX) else []
        for name, typ, opts, is_widget, has_control in spec["inputs"]:
            value = n["inputs"].get(name, opts.get("default"))
            is_link = _is_link(value, typ)
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
                value = "" if value is None and typ == "STRING" else value
                if isinstance(widgets, dict):
                    widgets[name] = value
                else:
                    widgets.append(value)
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
        node = {"id": int(n["id"]), "type": n["class_type"], "pos": [x, y],
                "size": list(n.get("size", estimate_size(n, spec))), "flags": {}, "order": order, "mode": 0,
                "inputs": ui_inputs, "outputs": [], "properties": {"Node name for S&R": n["class_type"]},
                "widgets_values": widgets}
        if n.get("title"):
            node["title"] = n["title"]
        nodes.append(node)
    for node in nodes:
        if node["type"] == "Reroute":
            node["outputs"][0]["links"] = out_links.get((node["id"], 0), [])
        if node["type"] in FRONTEND_ONLY:
            continue
        spec = specs[node["type"]]
        node["outputs"] = [{"name": name, "type": typ, "links": out_links.get((node["id"], i), []), "slot_index": i}
                           for i, (name, typ) in enumerate(spec["outputs"])]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": list(groups or []), "config": {}, "extra": {}, "version": 0.4}


def _note(n: dict, order: int) -> dict:
    text = n["inputs"]["text"]
    node = {"id": int(n["id"]), "type": "Note", "pos": list(n.get("pos", (40, 40))),
            "size": list(n.get("size", [380, 150])), "flags": {}, "order": order, "mode": 0,
            "properties": {"text": ""}, "widgets_values": [text], "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR}
    if n.get("title"):
        node["title"] = n["title"]
    return node


def ui_to_api(ui: dict, specs: dict) -> dict:
    """The API prompt the editor would queue for this UI graph (muted/bypassed and frontend-only nodes dropped)."""
    reroutes = {n["id"]: n for n in ui["nodes"] if n["type"] == "Reroute"}
    raw = {l[0]: (l[1], l[2]) for l in ui["links"]}

    def source(link_id):
        src, slot = raw[link_id]
        while src in reroutes:  # a Reroute passes its input on
            src, slot = raw[reroutes[src]["inputs"][0]["link"]]
        return [str(src), slot]
    link_src = {lid: source(lid) for lid in raw}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY:
            continue
        spec = specs[node["type"]]
        linked = {i["name"]: link_src[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        inputs, pos = {}, 0
        for name, typ, opts, is_widget, has_control in spec["inputs"]:
            if is_widget:
                if isinstance(values, dict):
                    if name not in values:
                        raise ValueError(f"node {node['id']} ({node['type']}): no widget value for '{name}'")
                    value = values[name]
                else:
                    if pos >= len(values):
                        raise ValueError(f"node {node['id']} ({node['type']}): widgets_values too short at '{name}'")
                    value = values[pos]
                    pos += 2 if has_control else 1
                inputs[name] = linked.get(name, value)
                if opts.get("forceInput") and name not in linked:
                    inputs.pop(name)
            elif name in linked:
                inputs[name] = linked[name]
        if isinstance(values, dict):  # VideoHelperSuite: widgets its JS adds per format (crf, pix_fmt, ...)
            inputs.update({k: linked.get(k, v) for k, v in values.items() if k not in inputs})
        entry = {"inputs": inputs, "class_type": node["type"]}
        entry["_meta"] = {"title": node.get("title") or spec.get("title") or node["type"]}
        api[str(node["id"])] = entry
    return api


# ------------------------------------------------------------------------------------------------ layout


def _edges(graph: list) -> list:
    """[(source id, source slot, target id, target input name)] of a graph description."""
    out = []
    for n in graph:
        for name, value in n["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out.append((int(value[0]), value[1], int(n["id"]), name))
    return out


def _input_slots(n: dict, spec: dict) -> dict:
    """{input name: slot index} of the sockets the editor makes for node description ``n``."""
    slots = {}
    for name, typ, opts, is_widget, _ in spec["inputs"]:
        value = n["inputs"].get(name, opts.get("default"))
        if not is_widget or _is_link(value, typ) or opts.get("forceInput"):
            slots[name] = len(slots)
    return slots


def wire_curve(a, b, samples: int = 12):
    """Points of litegraph's link from output point a to input point b (cubic Bezier, handles dist/4)."""
    dist = math.hypot(b[0] - a[0], b[1] - a[1])
    p1, p2 = (a[0] + dist * 0.25, a[1]), (b[0] - dist * 0.25, b[1])
    pts = []
    for k in range(samples + 1):
        t = k / samples
        u = 1 - t
        pts.append((u ** 3 * a[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * b[0],
                    u ** 3 * a[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * b[1]))
    return pts


def crossings(wires: list) -> list:
    """Pairs (i, j) of wires that cross. A wire is (source key, points); wires leaving the same output share
    their start and never count as crossing each other. Each wire is a polyline; segments are tested pairwise."""
    import numpy as np
    if len(wires) < 2:
        return []
    segs, owner = [], []
    for w, (_, pts) in enumerate(wires):
        for a, b in zip(pts[:-1], pts[1:]):
            segs.append((a[0], a[1], b[0], b[1]))
            owner.append(w)
    segs, owner = np.asarray(segs, dtype=np.float64), np.asarray(owner)
    keys = [k for k, _ in wires]
    key_id = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    source = np.asarray([key_id[keys[w]] for w in owner])
    p, q = segs[:, None, :2], segs[:, None, 2:]
    r, t = segs[None, :, :2], segs[None, :, 2:]

    def orient(a, b, c):
        v = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        return np.where(np.abs(v) < 1e-6, 0, np.sign(v))
    hit = (orient(p, q, r) * orient(p, q, t) < 0) & (orient(r, t, p) * orient(r, t, q) < 0)
    hit &= source[:, None] != source[None, :]
    i, j = np.nonzero(np.triu(hit, 1))
    return sorted({(int(min(a, b)), int(max(a, b))) for a, b in zip(owner[i], owner[j]) if a != b})


def _slot_y(node: dict, slot: int) -> float:
    return node["pos"][1] + (slot + 0.7) * SLOT_H


def ui_wires(ui: dict) -> list:
    """The wires of a UI workflow as drawn by the pinned editor: input slot k at (x + 10, y + (k + 0.7) * 20),
    output slot k at (x + width - 9, y + (k + 0.7) * 20) (litegraph getConnectionPos)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    wires = []
    for lid, src, sslot, dst, dslot, _ in ui["links"]:
        s, d = nodes[src], nodes[dst]
        a = (s["pos"][0] + s["size"][0] + 1 - SLOT_H / 2, _slot_y(s, sslot))
        b = (d["pos"][0] + SLOT_H / 2, _slot_y(d, dslot))
        wires.append(((src, sslot), wire_curve(a, b)))
    return wires


def _box(n: dict):
    title = 0 if n.get("type", n.get("class_type")) == "Reroute" else TITLE_H
    return (n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])


def overlaps(ui: dict, gap: float = 0) -> list:
    """Pairs of node ids whose boxes (title bar included) overlap."""
    boxes = {n["id"]: _box(n) for n in ui["nodes"]}
    return [(a, b) for a, b in itertools.combinations(sorted(boxes), 2)
            if boxes[a][0] < boxes[b][2] + gap and boxes[b][0] < boxes[a][2] + gap
            and boxes[a][1] < boxes[b][3] + gap and boxes[b][1] < boxes[a][3] + gap]


def layout(graph: list, specs: dict, group_order=("Load", "Invert", "Edit", "Output")):
    """Positions, sizes and group frames for a graph description whose nodes name their "group"; returns
    (graph with "pos" and "size" set, the UI "groups" list). Deterministic.

    Groups are column bands from left to right; inside a group a node's column is one more than the column of
    its latest same-group input (so every wire runs left to right). Each column is stacked top to bottom; the
    order inside every column is chosen (exhaustively per column, a few sweeps) for the fewest wire crossings
    as the editor draws wires, then the shortest vertical wire runs."""
    nodes = {int(n["id"]): dict(n) for n in graph}
    for n in nodes.values():
        n["size"] = list(n.get("size") or (estimate_size(n, specs[n["class_type"]]) if n["class_type"] != "Note"
                                           else [380, 150]))
    groups = [g for g in group_order if any(n.get("group") == g for n in nodes.values())]
    missing = [n["id"] for n in nodes.values() if n.get("group") not in groups]
    if missing:
        raise ValueError(f"nodes {missing} have no group of {group_order}")
    edges = [e for e in _edges(graph) if e[0] in nodes and e[2] in nodes]
    slot_of = {nid: _input_slots(n, specs[n["class_type"]]) for nid, n in nodes.items() if n["class_type"] != "Note"}

    depth = {}

    def depth_of(nid):
        if nid not in depth:
            preds = [s for s, _, t, _ in edges if t == nid and nodes[s]["group"] == nodes[nid]["group"]]
            depth[nid] = 1 + max((depth_of(s) for s in preds), default=-1)
        return depth[nid]
    columns = []
    for g in groups:
        members = sorted((nid for nid, n in nodes.items() if n["group"] == g),
                         key=lambda i: (nodes[i]["class_type"] != "Note", i))
        for lvl in sorted({depth_of(nid) for nid in members}):
            columns.append([nid for nid in members if depth_of(nid) == lvl])
    col_of = {nid: c for c, col in enumerate(columns) for nid in col}
    for s_, _, t_, _ in edges:
        if col_of[t_] <= col_of[s_]:
            raise ValueError(f"link {s_} -> {t_} goes against the group order {groups}")

    xs, x = [], 40
    for c, col in enumerate(columns):
        if c and nodes[col[0]]["group"] != nodes[columns[c - 1][0]]["group"]:
            x += 2 * GROUP_PAD
        xs.append(x)
        x += max(nodes[nid]["size"][0] for nid in col) + COLUMN_GAP
    top = 40 + GROUP_TITLE_H + TITLE_H

    def place(order):
        """Stacks each column top down; a node sits level with its inputs where the nodes above leave room
        (the median of the heights that make its wires horizontal)."""
        pos = {}
        for c, col in enumerate(order):
            floor = top
            for nid in col:
                want = sorted(pos[s_][1] + ss * SLOT_H - slot_of[nid][name] * SLOT_H
                              for s_, ss, t_, name in edges if t_ == nid and s_ in pos)
                y = max(floor, want[len(want) // 2] if want else top)
                pos[nid] = (xs[c], y)
                floor = y + nodes[nid]["size"][1] + TITLE_H + ROW_GAP
        return pos

    def score(order):
        pos = place(order)
        ui_like = {"nodes": [{"id": nid, "pos": list(pos[nid]), "size": nodes[nid]["size"]} for nid in pos],
                   "links": [[k, s_, ss, t_, slot_of[t_][name], None] for k, (s_, ss, t_, name) in enumerate(edges)]}
        wires = ui_wires(ui_like)
        return (len(crossings(wires)), sum(abs(p[-1][1] - p[0][1]) for _, p in wires))

    order = [list(col) for col in columns]
    best = score(order)
    for _ in range(3):
        changed = False
        for c, col in enumerate(order):
            fixed = [nid for nid in col if nodes[nid]["class_type"] == "Note"]  # the read-me stays on top
            movable = [nid for nid in col if nid not in fixed]
            if len(movable) < 2:
                continue
            for perm in itertools.islice(itertools.permutations(movable), 720):
                trial = order[:c] + [fixed + list(perm)] + order[c + 1:]
                sc = score(trial)
                if sc < best:
                    best, order, changed = sc, trial, True
        if not changed:
            break
    pos = place(order)
    out = [dict(n, pos=[int(pos[int(n["id"])][0]), int(pos[int(n["id"])][1])], size=nodes[int(n["id"])]["size"])
           for n in graph]

    frames = []
    for g in groups:
        boxes = [_box(m) for m in out if m.get("group") == g]
        x0 = min(b[0] for b in boxes) - GROUP_PAD
        y0 = min(b[1] for b in boxes) - GROUP_TITLE_H
        x1 = max(b[2] for b in boxes) + GROUP_PAD
        y1 = max(b[3] for b in boxes) + GROUP_PAD
        frames.append({"title": g, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": GROUP_COLORS.get(g, "#3f789e"),
                       "font_size": 24, "flags": {}})
    return out, frames
