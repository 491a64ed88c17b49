"""UI-format <-> API-format workflow conversion, following the pinned frontend's rules, and the layout of the
shipped workflows (left to right in groups, no wire under a node, the fewest crossings their columns allow).

The editor (web/scripts/app.js, widgets.js of ComfyUI 2024-03) makes a widget for INT, FLOAT,
STRING, BOOLEAN and combo (list) inputs, in INPUT_TYPES order (required, then optional), and a
socket for every other type. INT inputs named `seed`/`noise_seed` (or with control_after_generate)
get an extra "control after generate" widget right after them. Widgets of inputs marked forceInput
become sockets but keep their value in widgets_values. Frontend-only nodes (Note, Reroute, ...) never reach
the API prompt. VideoHelperSuite's nodes save their widget values as an object {name: value}.

`node_specs` describes classes as /object_info does (input order, widget or socket, outputs).

Layout (``layout``): every node of a graph description names its group ("Load", "Invert", "Edit", "Output");
groups are columns from left to right, long wires run through Reroute nodes, the order inside the columns is
solved for the fewest crossings (an integer program, scipy's HiGHS), and the groups get frames with titles.
Wires are measured as litegraph draws them: a cubic Bezier from the output slot to the input slot with
horizontal handles a quarter of their distance long (``ui_wires``); ``crossings`` and ``wires_through_nodes``
are what the tests check.
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
REROUTE_SIZE, REROUTE_GAP, REROUTE_FIRST_ID = (75, 26), 24, 500  # rerouteNode.js: computeSize() is [75, 26]
GAP_PER_DROP = 0.5
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
    """Pairs (i, j) of wires that cross. A wire is (source key, points), all with the same number of points;
    wires leaving the same output share their start and never count as crossing each other. Each wire is a
    polyline: pairs whose bounding boxes meet have their segments tested pairwise."""
    import numpy as np
    if len(wires) < 2:
        return []
    pts = np.asarray([p for _, p in wires], dtype=np.float64)  # (wires, points, 2)
    keys = [k for k, _ in wires]
    lo, hi = pts.min(1), pts.max(1)
    i, j = np.triu_indices(len(wires), 1)
    meet = (lo[i] <= hi[j]).all(1) & (lo[j] <= hi[i]).all(1)
    meet &= np.asarray([keys[a] != keys[b] for a, b in zip(i, j)], dtype=bool)
    i, j = i[meet], j[meet]
    if not len(i):
        return []
    p, q = pts[i, :-1, None, :], pts[i, 1:, None, :]  # (pairs, segments, 1, 2)
    r, t = pts[j, None, :-1, :], pts[j, None, 1:, :]  # (pairs, 1, segments, 2)

    def orient(a, b, c):
        v = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        return np.where(np.abs(v) < 1e-6, 0, np.sign(v))
    hit = ((orient(p, q, r) * orient(p, q, t) < 0) & (orient(r, t, p) * orient(r, t, q) < 0)).any((1, 2))
    return sorted((int(a), int(b)) for a, b in zip(i[hit], j[hit]))


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


def node_box(n: dict):
    """(x0, y0, x1, y1) of a node as drawn: its title bar included (a Reroute has none)."""
    title = 0 if n.get("type", n.get("class_type")) == "Reroute" else TITLE_H
    return (n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])


def overlaps(ui: dict, gap: float = 0) -> list:
    """Pairs of node ids whose boxes (title bar included) overlap."""
    boxes = {n["id"]: node_box(n) for n in ui["nodes"]}
    return [(a, b) for a, b in itertools.combinations(sorted(boxes), 2)
            if boxes[a][0] < boxes[b][2] + gap and boxes[b][0] < boxes[a][2] + gap
            and boxes[a][1] < boxes[b][3] + gap and boxes[b][1] < boxes[a][3] + gap]


def wires_through_nodes(wires: list, boxes: dict, ends: list) -> list:
    """(wire index, node id) of every wire that runs under a node other than its own two ends (litegraph draws
    wires behind nodes, so such a wire seems to enter that node). ``boxes``: {node id: (x0, y0, x1, y1)};
    ``ends``: (source id, target id) per wire."""
    import numpy as np
    if not wires or not boxes:
        return []
    ids = list(boxes)
    b = np.asarray([boxes[i] for i in ids], dtype=np.float64)[None, None]
    pts = np.asarray([p for _, p in wires], dtype=np.float64)  # (wires, samples + 1, 2)
    t = np.linspace(0, 1, 6)[None, None, :, None]
    dense = (pts[:, :-1, None] * (1 - t) + pts[:, 1:, None] * t).reshape(len(wires), -1, 2)[:, :, None]
    inside = ((dense[..., 0] > b[..., 0] + 2) & (dense[..., 0] < b[..., 2] - 2)
              & (dense[..., 1] > b[..., 1] + 2) & (dense[..., 1] < b[..., 3] - 2)).any(1)  # (wires, boxes)
    return [(int(w), ids[k]) for w, k in zip(*np.nonzero(inside)) if ids[k] not in ends[w]]


def _fewest_crossings(columns: list, gap_wires: dict, pinned: set) -> tuple:
    """(the fewest crossings, the order of every column that has them), from an integer program (scipy's
    HiGHS): one binary per pair of items of a column (above / below, transitive), one per pair of wires of a gap
    (they cross when their ends come in opposite orders; the ends of one node come in slot order). ``columns``: lists of item ids
    (``pinned`` ones stay first); ``gap_wires``: {column: [(source, source slot, target, target slot)]}."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    index, rows, lo, hi = {}, [], [], []

    def var(key):
        return index.setdefault(key, len(index))
    for col in columns:
        free = [m for m in col if m not in pinned]
        for u, v in itertools.combinations(free, 2):
            var((u, v))
        for u, v, w in itertools.combinations(free, 3):  # transitivity: 0 <= uv + vw - uw <= 1
            rows.append({var((u, v)): 1, var((v, w)): 1, var((u, w)): -1})
            lo.append(0)
            hi.append(1)

    def above(u, v):
        """(constant, {var: coefficient}) of "u above v" for two items of one column."""
        if u in pinned or v in pinned:
            return (1 if u in pinned else 0), {}
        return (0, {index[(u, v)]: 1}) if (u, v) in index else (1, {index[(v, u)]: -1})

    def order_of(a, b, slot_a, slot_b):
        return (int(slot_a < slot_b), {}) if a == b else above(a, b)
    cost = []
    for wires in gap_wires.values():
        for (s1, ss1, t1, ts1), (s2, ss2, t2, ts2) in itertools.combinations(wires, 2):
            if (s1, ss1) == (s2, ss2):
                continue  # wires of one output share their start
            (c1, a), (c2, b) = order_of(s1, s2, ss1, ss2), order_of(t1, t2, ts1, ts2)
            x = var(("cross", len(index)))
            cost.append(x)
            for sign in (1, -1):  # x >= +-(src order - tgt order)
                row = {x: 1}
                for k, v in a.items():
                    row[k] = row.get(k, 0) - sign * v
                for k, v in b.items():
                    row[k] = row.get(k, 0) + sign * v
                rows.append(row)
                lo.append(sign * (c1 - c2))
                hi.append(np.inf)
    n = len(index)
    if not n:
        return 0, [list(col) for col in columns]
    objective = np.zeros(n)
    objective[cost] = 1
    matrix = np.zeros((len(rows), n))
    for r, row in enumerate(rows):
        for k, v in row.items():
            matrix[r, k] += v
    constraints = [LinearConstraint(matrix, lo, hi)] if rows else []
    result = milp(objective, constraints=constraints, integrality=np.ones(n), bounds=Bounds(0, 1),
                  options={"time_limit": 60})
    if result.x is None:
        raise RuntimeError(f"layout: no order found ({result.message})")
    value = np.round(result.x).astype(int)
    out = []
    for col in columns:
        free = [m for m in col if m not in pinned]
        below = {u: sum(value[index[(u, v)]] if (u, v) in index else 1 - value[index[(v, u)]]
                        for v in free if v != u) for u in free}
        out.append([m for m in col if m in pinned] + sorted(free, key=lambda u: -below[u]))
    return int(round(result.fun)), out


def _depths(nodes: dict, edges: list) -> dict:
    """{node id: its column inside its group}: one more than its latest same-group input, or its "column"."""
    depth = {}

    def depth_of(nid):
        if nid not in depth:
            preds = [s for s, _, t, _ in edges if t == nid and nodes[s]["group"] == nodes[nid]["group"]]
            depth[nid] = nodes[nid].get("column", 1 + max((depth_of(s) for s in preds), default=-1))
        return depth[nid]
    return {nid: depth_of(nid) for nid in nodes}


def _arrange(nodes: dict, edges: list, slot_of: dict, groups: list, depth: dict) -> dict:
    """Columns from the groups and ``depth``, a Reroute per column an output passes (shared by its consumers),
    and the order of each column with the fewest crossings. Returns {"columns", "order", "col_of", "edges" (the
    wires, each spanning one gap), "gap_wires", "reroutes" ({id: node description}), "fewest"}."""
    columns = []
    for g in groups:
        members = sorted((nid for nid, n in nodes.items() if n["group"] == g),
                         key=lambda i: (nodes[i]["class_type"] != "Note", i))
        for lvl in sorted({depth[nid] for nid in members}):
            columns.append([nid for nid in members if depth[nid] == lvl])
    col_of = {nid: c for c, col in enumerate(columns) for nid in col}
    for s_, _, t_, _ in edges:
        if col_of[t_] <= col_of[s_]:
            raise ValueError(f"link {s_} -> {t_} goes against the group order {groups} or the columns given")
    next_id = itertools.count(max(REROUTE_FIRST_ID, max(nodes) + 1))
    split, reroutes = [], {}
    for (s_, ss) in dict.fromkeys((e[0], e[1]) for e in edges):
        targets = [(t_, name) for a, b, t_, name in edges if (a, b) == (s_, ss)]
        carrier = {col_of[s_]: (s_, ss)}
        for c in range(col_of[s_] + 1, max(col_of[t_] for t_, _ in targets)):
            r = next(next_id)
            reroutes[r] = {"id": r, "class_type": "Reroute", "title": None, "group": nodes[columns[c][0]]["group"],
                           "inputs": {"": list(carrier[c - 1])}, "size": list(REROUTE_SIZE)}
            split.append((*carrier[c - 1], r, ""))
            columns[c].append(r)
            col_of[r], carrier[c] = c, (r, 0)
        split += [(*carrier[col_of[t_] - 1], t_, name) for t_, name in targets]
    gap_wires = {}
    for s_, ss, t_, name in split:
        gap_wires.setdefault(col_of[s_], []).append((s_, ss, t_, 0 if t_ in reroutes else slot_of[t_][name]))
    notes = {nid for nid, n in nodes.items() if n["class_type"] == "Note"}
    fewest, order = _fewest_crossings(columns, gap_wires, notes)
    return {"columns": columns, "order": order, "col_of": col_of, "edges": split, "gap_wires": gap_wires,
            "reroutes": reroutes, "fewest": fewest}


def fewest_crossings(graph: list, specs: dict, group_order=("Load", "Invert", "Edit", "Output")) -> int:
    """The fewest wire crossings any order of the columns ``layout`` makes for this graph description can have
    (wires counted between consecutive columns, as if straight)."""
    nodes = {int(n["id"]): dict(n) for n in graph}
    groups = [g for g in group_order if any(n.get("group") == g for n in nodes.values())]
    edges = [e for e in _edges(graph) if e[0] in nodes and e[2] in nodes]
    slot_of = {nid: _input_slots(n, specs[n["class_type"]]) for nid, n in nodes.items() if n["class_type"] != "Note"}
    return _arrange(nodes, edges, slot_of, groups, _depths(nodes, edges))["fewest"]


def search_columns(graph: list, specs: dict, group_order=("Load", "Invert", "Edit", "Output")) -> dict:
    """Columns (inside their groups) with fewer crossings than the default ones: each node in turn tries every
    column its same-group inputs and outputs allow (one more than the group has, at most), kept when the
    fewest crossings drop. Slow (an integer program per try): the builder's --search-columns prints the
    result, and the graph descriptions carry it as "column"."""
    nodes = {int(n["id"]): dict(n) for n in graph}
    groups = [g for g in group_order if any(n.get("group") == g for n in nodes.values())]
    edges = [e for e in _edges(graph) if e[0] in nodes and e[2] in nodes]
    slot_of = {nid: _input_slots(n, specs[n["class_type"]]) for nid, n in nodes.items() if n["class_type"] != "Note"}
    for n in nodes.values():
        n.pop("column", None)
    depth = _depths(nodes, edges)
    best = _arrange(nodes, edges, slot_of, groups, depth)["fewest"]
    for _ in range(3):
        improved = False
        for nid in sorted(n for n in nodes if nodes[n]["class_type"] != "Note"):
            group = nodes[nid]["group"]
            same = [m for m in nodes if nodes[m]["group"] == group]
            lo = 1 + max((depth[s] for s, _, t, _ in edges if t == nid and s in same), default=-1)
            hi = min((depth[t] for s, _, t, _ in edges if s == nid and t in same), default=max(depth[m] for m in same) + 2)
            for d in range(lo, hi):
                if d == depth[nid]:
                    continue
                trial = {**depth, nid: d}
                fewest = _arrange(nodes, edges, slot_of, groups, trial)["fewest"]
                if fewest < best:
                    best, depth, improved = fewest, trial, True
        if not improved:
            break
    defaults = _depths(nodes, edges)
    return {"fewest": best, "columns": {nid: d for nid, d in depth.items() if d != defaults[nid]}}


def layout(graph: list, specs: dict, group_order=("Load", "Invert", "Edit", "Output")):
    """Positions, sizes and group frames for a graph description whose nodes name their "group"; returns
    (the graph's nodes with "pos" and "size" set, plus the Reroute nodes its wires need; the UI "groups" list).
    Deterministic.

    - Columns: groups are column bands from left to right; inside a group a node's column is one more than the
      column of its latest same-group input (so every wire runs left to right), or its "column" in the group
      where the description gives one. The nodes of a column get one width, so its outputs leave at one x.
    - Long wires: an output feeding nodes more than one column to its right runs through a Reroute in each
      column it passes (shared by all its consumers; in a wide column a pair of them, at its left and right
      edges, level), so every wire bends only in the gap between two columns, never under a node.
    - Order: with every wire spanning one gap, the order inside the columns alone decides the crossings; it is
      solved exactly for the fewest (``_fewest_crossings``), then single moves that keep that count lower the
      crossings as the editor draws them (cubic curves) where they differ.
    - Heights: each column is stacked top to bottom, a node level with its inputs where room allows; a gap is
      as wide as half the steepest drop of its wires.
    - Then every Reroute goes whose removal adds no crossing and no wire under a node and leaves no steep wire.

    Some crossings cannot go in a left-to-right drawing: VAE Encode takes the video loader's frames above the
    checkpoint's VAE, while the loader's fps and audio (below its frames) and the checkpoint's MODEL and CLIP
    (above its VAE) all run on to the right, so one of them must cross one of those two wires."""
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
    notes = {nid for nid, n in nodes.items() if n["class_type"] == "Note"}  # the read-me stays on top
    plan = _arrange(nodes, edges, slot_of, groups, _depths(nodes, edges))
    columns, order, col_of, edges = plan["columns"], plan["order"], plan["col_of"], plan["edges"]
    nodes.update(plan["reroutes"])
    is_reroute = {nid: nid in plan["reroutes"] for nid in nodes}
    slot_of.update({r: {"": 0} for r in plan["reroutes"]})
    next_id = itertools.count(max(nodes) + 1)
    inputs_of = {}
    for s_, ss, t_, name in edges:
        inputs_of.setdefault(t_, []).append((s_, ss, slot_of[t_][name]))
    gap_wires = plan["gap_wires"]

    widths = []
    for col in columns:
        widths.append(max(nodes[nid]["size"][0] for nid in col))
        for nid in col:  # one width per column: every output of a column leaves at the same x
            if not is_reroute[nid] and nid not in notes:
                nodes[nid]["size"][0] = widths[-1]
    top = 40 + GROUP_TITLE_H + TITLE_H
    # every Reroute in a column wider than itself gets a twin at the column's right edge, level with it: the
    # wire runs straight through the column between the two and bends only in the gaps, never under a node
    twin_of = {}
    for r in [nid for nid in nodes if is_reroute[nid]]:
        if widths[col_of[r]] - REROUTE_SIZE[0] >= REROUTE_SIZE[0]:
            twin = twin_of[r] = next(next_id)
            nodes[twin] = dict(nodes[r], id=twin, inputs={"": [r, 0]}, size=list(REROUTE_SIZE))
            is_reroute[twin], slot_of[twin], col_of[twin] = True, {"": 0}, col_of[r]
    twins = set(twin_of.values())
    edges = [(twin_of.get(s_, s_), ss, t_, name) for s_, ss, t_, name in edges] + \
        [(r, 0, twin, "") for r, twin in twin_of.items()]

    def place(order):
        """Stacks each column top down; a node sits level with its inputs where the nodes above leave room
        (the median of the heights that make its wires horizontal)."""
        pos = {}
        for c, col in enumerate(order):
            floor = top - TITLE_H  # the lowest free y in this column (a node's box starts above pos by its title)
            for nid in col:
                title = 0 if is_reroute[nid] else TITLE_H
                want = sorted(pos[twin_of.get(s_, s_)] + ss * SLOT_H - slot * SLOT_H
                              for s_, ss, slot in inputs_of.get(nid, ()))
                y = max(floor + title, want[len(want) // 2] if want else top)
                pos[nid] = y
                if nid in twin_of:
                    pos[twin_of[nid]] = y
                floor = y + nodes[nid]["size"][1] + (REROUTE_GAP if is_reroute[nid] else ROW_GAP)
        # a gap is as wide as half the steepest drop of its wires (COLUMN_GAP at least): steep wires in a narrow
        # gap would be near-vertical S curves that touch their neighbours
        drop = [0] * len(order)
        for s_, ss, t_, name in edges:
            drop[col_of[s_]] = max(drop[col_of[s_]], abs(pos[t_] + slot_of[t_][name] * SLOT_H - pos[s_] - ss * SLOT_H))
        xs, x = [], 40
        for c, col in enumerate(order):
            if c and nodes[col[0]]["group"] != nodes[order[c - 1][0]]["group"]:
                x += 2 * GROUP_PAD
            xs.append(x)
            x += widths[c] + max(COLUMN_GAP, int(drop[c] * GAP_PER_DROP))
        return {nid: (xs[col_of[nid]] + (widths[col_of[nid]] - REROUTE_SIZE[0] if nid in twins else 0), y)
                for nid, y in pos.items()}

    def tangles(pos, edge_list, kept):
        """(crossings, wires under nodes) as the editor draws the wires."""
        ui_like = {"nodes": [{"id": nid, "pos": list(pos[nid]), "size": nodes[nid]["size"],
                              "type": nodes[nid]["class_type"]} for nid in kept],
                   "links": [[k, s_, ss, t_, slot_of[t_][name], None] for k, (s_, ss, t_, name) in enumerate(edge_list)]}
        wires = ui_wires(ui_like)
        boxes = {n["id"]: node_box(n) for n in ui_like["nodes"]}
        return len(crossings(wires)), len(wires_through_nodes(wires, boxes, [(e[0], e[2]) for e in edge_list]))

    def on_paper(order):
        rank = {nid: i for col in order for i, nid in enumerate(col)}
        count = 0
        for wires in gap_wires.values():
            ends = [((rank[s_], ss), (rank[t_], ts), (s_, ss)) for s_, ss, t_, ts in wires]
            for (a0, a1, ka), (b0, b1, kb) in itertools.combinations(ends, 2):
                if ka != kb and (a0 < b0) != (a1 < b1):
                    count += 1
        return count

    # wires bend as drawn, so an order with the fewest crossings on paper may still cross on screen: moves of
    # one item that keep the fewest crossings on paper and lower the drawn ones
    fewest = on_paper(order)
    everything = set(nodes)
    best = tangles(place(order), edges, everything)
    for _ in range(4):
        changed = False
        for c in range(len(order)):
            pinned = [m for m in order[c] if m in notes]
            for nid in [m for m in order[c] if m not in pinned]:
                rest = [m for m in order[c] if m != nid and m not in pinned]
                for j in range(len(rest) + 1):
                    trial = order[:c] + [pinned + rest[:j] + [nid] + rest[j:]] + order[c + 1:]
                    if trial[c] == order[c] or on_paper(trial) > fewest:
                        continue
                    t = tangles(place(trial), edges, everything)
                    if sum(t) < sum(best):
                        best, order, changed = t, trial, True
                        break
        if not changed or sum(best) == 0:
            break
    pos = place(order)

    kept = set(pos)
    allowed = tangles(pos, edges, kept)
    for r in sorted(nid for nid in kept if is_reroute[nid]):
        src = next((s_, ss) for s_, ss, t_, _ in edges if t_ == r)
        trial = [(*src, t_, name) if s_ == r else (s_, ss, t_, name) for s_, ss, t_, name in edges if t_ != r]
        start = pos[src[0]][1] + src[1] * SLOT_H
        gentle = all(abs(pos[t_][1] + slot_of[t_][name] * SLOT_H - start) <= 0.5 * (pos[t_][0] - pos[src[0]][0])
                     for s_, _, t_, name in edges if s_ == r)  # the wires that replace r's are no steep ones
        if gentle and all(a <= b for a, b in zip(tangles(pos, trial, kept - {r}), allowed)):
            edges, kept = trial, kept - {r}
    feeds = {(t_, name): [s_, ss] for s_, ss, t_, name in edges}
    out = []
    for n in list(graph) + [nodes[r] for r in sorted(kept) if is_reroute[r]]:
        nid = int(n["id"])
        inputs = {k: feeds.get((nid, k), v) for k, v in n["inputs"].items()}
        n = {k: v for k, v in n.items() if k != "column"}
        out.append(dict(n, inputs=inputs, pos=[int(pos[nid][0]), int(pos[nid][1])], size=nodes[nid]["size"]))

    frames = []
    for g in groups:
        boxes = [node_box(m) for m in out if m.get("group") == g]
        x0 = min(b[0] for b in boxes) - GROUP_PAD
        y0 = min(b[1] for b in boxes) - GROUP_TITLE_H
        x1 = max(b[2] for b in boxes) + GROUP_PAD
        y1 = max(b[3] for b in boxes) + GROUP_PAD
        frames.append({"title": g, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": GROUP_COLORS.get(g, "#3f789e"),
                       "font_size": 24, "flags": {}})
    return out, frames
