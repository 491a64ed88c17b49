"""The real frontend in a real browser: every UI-format workflow in example_workflows/ is loaded into the editor
served by the running ComfyUI (headless Chromium, driven over the DevTools protocol with websocket-client),
checked for missing nodes and widgets, converted to an API prompt by the editor itself
(`app.graphToPrompt()`), compared with its API twin and queued (shrunk) on the server.

Screenshots: test_artifacts/screenshots/<name>.png for every workflow, and
docs/images/reconstruction_workflow.png (for the README) from stem_reconstruction.json.

Chromium: Debian's `chromium` package (scripts/setup_browser.sh installs it); CHROMIUM=/path overrides.
"""
import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import load_api, skip_without_optional_nodes
from tests.e2e.test_reconstruction_server import small

import comfy_client as cc  # noqa: E402
import comfy_host  # noqa: E402
from build_workflows import optional_nodes  # noqa: E402
from workflow_format import input_specs  # noqa: E402

WORKFLOWS = sorted(p for p in (REPO / "example_workflows").glob("*.json"))  # = workflows/ui/*.json (synced)
SCREENSHOTS = REPO / "test_artifacts" / "screenshots"
README_IMAGE = REPO / "docs" / "images" / "reconstruction_workflow.png"
README_SOURCE = "stem_reconstruction"
README_MAX_BYTES = 300 * 1024
VIEW_W, VIEW_H = 1600, 900
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                  f"--window-size={VIEW_W},{VIEW_H}", "--remote-debugging-port=0"]
INSTALL_HINT = ("headless Chromium is needed for the browser test: run `bash scripts/setup_browser.sh` "
                "(as root it does `apt-get update && apt-get install -y chromium`), or set CHROMIUM=/path/to/chromium")


def find_chromium():
    env = os.environ.get("CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for cand in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = cand if os.path.isabs(cand) else shutil.which(cand)
        if path and os.access(path, os.X_OK):
            return path
    return None


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CDP:
    """Minimal DevTools-protocol client for one page target."""

    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, http_no_proxy=["127.0.0.1", "localhost"],
                                              suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, timeout=60, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method}: no answer in {timeout} s")

    def js(self, expression, timeout=60):
        """Evaluate (awaiting promises) and return the JSON value; page exceptions raise."""
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                      returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(f"page JS failed: {d.get('exception', {}).get('description') or d.get('text')}")
        return r["result"].get("value")

    def errors(self):
        out = []
        for e in self.events:
            if e["method"] == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text"))
            elif e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
        return out

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


@pytest.fixture(scope="module")
def page(server):
    exe = find_chromium()
    if exe is None:
        pytest.fail(f"Chromium not found. {INSTALL_HINT}")
    profile = tempfile.mkdtemp(prefix="stem-chromium-")
    log = open(os.path.join(profile, "chromium.log"), "wb")
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    cdp = None
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = open(os.path.join(profile, "chromium.log"), errors="replace").read()[-2000:]
                pytest.fail(f"Chromium ({exe}) did not start: {tail}\n{INSTALL_HINT}")
            time.sleep(0.2)
        port = int(open(port_file).read().split()[0])
        targets = json.loads(_NO_PROXY.open(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        target = next(t for t in targets if t.get("type") == "page")
        cdp = CDP(target["webSocketDebuggerUrl"])
        cdp.call("Runtime.enable")
        cdp.call("Page.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=VIEW_W, height=VIEW_H, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", url=f"http://{server.address}/")
        deadline = time.monotonic() + 90
        ready = "!!(window.app && app.graph && window.LiteGraph && LiteGraph.registered_node_types['STEMInvert'])"
        while not cdp.js(ready):
            if time.monotonic() > deadline:
                pytest.fail(f"the ComfyUI editor did not come up in the browser in 90 s; page errors: {cdp.errors()}")
            time.sleep(0.5)
        cdp.js("new Promise(r => setTimeout(r, 500))")
        yield cdp
    finally:
        if cdp is not None:
            cdp.close()
        comfy_host.stop_process(proc, grace=15)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


LOAD_JS = r"""
(async (wf) => {
  const modal = () => [...document.querySelectorAll('.comfy-modal, .comfy-missing-nodes, .p-dialog')]
      .filter(e => e.offsetParent !== null || getComputedStyle(e).display === 'flex')
      .map(e => e.textContent.trim()).filter(t => t);
  app.ui?.dialog?.close?.();
  await app.loadGraphData(wf);
  await new Promise(r => setTimeout(r, 300));
  const unknown = wf.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types));
  const nodes = app.graph._nodes.map(n => ({
      id: n.id, type: n.type, title: n.title,
      widgets: (n.widgets || []).map(w => w.name),
      values: (n.widgets || []).map(w => (w.value === undefined ? null : w.value)),
      inputs: (n.inputs || []).map(i => i.name), outputs: (n.outputs || []).map(o => o.name)}));
  const p = await app.graphToPrompt();
  return {dialogs: modal(), unknown, nodes, output: p.output, links: app.graph.links ? Object.keys(app.graph.links).length : 0};
})
"""

FIT_JS = r"""
(() => {
  const ns = app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of ns) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const c = app.canvas.canvas, pad = 30;
  const top = (document.querySelector('.comfy-menu') ? 0 : 0);
  const scale = Math.min((c.width - 2 * pad) / (x1 - x0), (c.height - 2 * pad) / (y1 - y0), 1.2);
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [pad / scale - x0 + ((c.width - 2 * pad) / scale - (x1 - x0)) / 2, pad / scale - y0 + top];
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  return [x0, y0, x1, y1, scale];
})()
"""


def _screenshot(cdp, name):
    cdp.js(FIT_JS)
    cdp.js("document.querySelector('.comfy-menu') && (document.querySelector('.comfy-menu').style.display='none')")
    cdp.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    data = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    cdp.js("document.querySelector('.comfy-menu') && (document.querySelector('.comfy-menu').style.display='')")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.png").write_bytes(data)
    return data


def _small_png(data, max_bytes=README_MAX_BYTES):
    """The screenshot as an adaptive-palette PNG (the editor has few colours), shrunk until small enough."""
    from PIL import Image
    img = Image.open(io.BytesIO(data)).convert("RGB")
    for colors, scale in ((256, 1.0), (128, 1.0), (128, 0.8), (64, 0.7), (64, 0.5)):
        im = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        buf = io.BytesIO()
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
    return buf.getvalue()


def _object_info(server):
    return json.loads(cc._http("GET", f"http://{server.address}/object_info")[1])


def test_workflows_exist():
    assert WORKFLOWS, "no UI-format workflows in example_workflows/*.json"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_in_browser(page, server, server_input, run, path):
    name = path.stem
    ui = json.loads(path.read_text())
    skip_without_optional_nodes(_object_info(server), ui)
    page.events.clear()
    res = page.js(f"{LOAD_JS}({json.dumps(ui)})", timeout=120)
    shot = _screenshot(page, name)
    if name == README_SOURCE and os.environ.get("STEM_UPDATE_DOCS") == "1":
        # refresh the README's picture only on request, so a test run never changes tracked files
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        # a wide viewport, so the editor draws the graph near full scale with its titles and widgets (below
        # scale 0.6 litegraph leaves text out), then shrunk to fit
        page.call("Emulation.setDeviceMetricsOverride", width=2 * VIEW_W, height=VIEW_H, deviceScaleFactor=1,
                  mobile=False)
        resize = "window.dispatchEvent(new Event('resize')); new Promise(r => setTimeout(r, 300))"
        try:
            page.js(resize)  # the editor sizes its canvas to the window on resize
            wide = _screenshot(page, f"{name}_wide")
        finally:
            page.call("Emulation.setDeviceMetricsOverride", width=VIEW_W, height=VIEW_H, deviceScaleFactor=1,
                      mobile=False)
            page.js(resize)
        README_IMAGE.write_bytes(_small_png(wide))
        assert README_IMAGE.stat().st_size < README_MAX_BYTES

    # 1. no missing-node warning, nothing unknown, no page errors
    assert not res["unknown"], f"{name}: node types unknown to the editor: {res['unknown']}"
    assert not any("were not found" in d or "Loading aborted" in d for d in res["dialogs"]), \
        f"{name}: the editor showed a warning: {res['dialogs']}"
    errors = [e for e in page.errors() if "favicon" not in str(e)]
    assert not errors, f"{name}: errors in the page while loading: {errors}"

    # 2. every node present, ours with exactly the widgets of INPUT_TYPES
    info = _object_info(server)
    loaded = {n["id"]: n for n in res["nodes"]}
    assert set(loaded) == {n["id"] for n in ui["nodes"]}, f"{name}: nodes lost while loading"
    ours = [n for n in res["nodes"] if n["type"].startswith("STEM")]
    assert ours, f"{name}: no STEM node in the workflow"
    for n in ours:
        spec = info[n["type"]]["input"]
        expected = [s[0] for s in input_specs(spec) if s[3] and not s[2].get("forceInput")]
        # inputs converted to sockets (linked widgets) keep their widget in the pinned editor's graph too
        # current frontends add an "upload" button widget to a combo flagged video_upload / image_upload
        uploads = any(s[2].get("video_upload") or s[2].get("image_upload") for s in input_specs(spec))
        ui_only = {"control_after_generate"} | ({"upload"} if uploads else set())
        widgets = [w for w in n["widgets"] if w not in ui_only]
        linked = {i["name"] for u in ui["nodes"] if u["id"] == n["id"] for i in u.get("inputs", [])
                  if i.get("widget")}
        assert [w for w in widgets if w not in linked] == [w for w in expected if w not in linked], \
            f"{name}: node {n['id']} ({n['type']}) has widgets {widgets}, INPUT_TYPES says {expected}"
        ui_node = next(u for u in ui["nodes"] if u["id"] == n["id"])
        names = [w for w in n["widgets"] if not (uploads and w == "upload")]
        values = [v for w, v in zip(n["widgets"], n["values"]) if not (uploads and w == "upload")]
        saved = ui_node["widgets_values"]
        saved_names = [x for s in input_specs(spec) if s[3] for x in [s[0]] + ["control_after_generate"] * s[4]]
        if len(saved) == len(saved_names) and names != saved_names:
            # the pinned editor saved a value for forceInput inputs too; current editors make no widget for them
            saved = [v for w, v in zip(saved_names, saved) if w in names]
        assert values == saved, \
            f"{name}: node {n['id']} ({n['type']}) widget values {values} != saved {ui_node['widgets_values']}"

    # 3. the editor's API prompt equals the API twin (inputs and class types) ...
    prompt = res["output"]
    twin = load_api(name)
    # the pinned editor also sends the value of Load Image's upload button (an image_upload widget of the UI)
    ui_widget = {t for t, spec in info.items() if any(s[2].get("image_upload") for s in input_specs(spec["input"]))}
    strip = lambda wf: {k: {"class_type": v["class_type"], "inputs": {  # noqa: E731
        i: x for i, x in v["inputs"].items() if not (i == "upload" and v["class_type"] in ui_widget)}}
        for k, v in wf.items()}
    assert strip(prompt) == strip(twin), (
        f"{name}: the editor's prompt differs from workflows/api/{name}.json:\n"
        + "\n".join(f"  node {k}: editor {strip(prompt).get(k)} vs twin {strip(twin).get(k)}"
                    for k in sorted(set(prompt) | set(twin)) if strip(prompt).get(k) != strip(twin).get(k)))

    # ... and the server accepts it: queued shrunk so it runs in seconds (core Load Video has no frame cap or
    # size: tests/e2e/test_example_workflows_server.py runs that variant with its own shrinking)
    if any(v["class_type"] == "LoadVideo" for v in prompt.values()):
        return
    video = server_input("wolf.mp4")
    queued = small(json.loads(json.dumps(prompt)), video)
    for u in ui["nodes"]:
        if u["type"] == cc.IMAGE_LOADER and cc.EDITED_FRAME_MARK in (u.get("title") or "").lower():
            # the Videoshop workflows' edited first frame: any picture of the input folder does for the plumbing
            queued[str(u["id"])]["inputs"]["image"] = server_input("car-turn") + "/00000.png"
    result = run(queued, timeout=300)
    assert result["prompt_id"] and not result["node_errors"]
    print(f"{name}: {len(res['nodes'])} nodes, {res['links']} links, screenshot {len(shot)} bytes, "
          f"ran in {result['elapsed_s']:.1f} s")


SETTINGS_JS = r"""
(async (old) => {
  const fresh = LiteGraph.createNode("STEMTokenFlowEdit");
  const control = (n) => (n.widgets || []).find(w => w.name === "control_after_generate")?.value;
  const loaded = LiteGraph.createNode("STEMTokenFlowEdit");
  loaded.configure({id: 4242, type: "STEMTokenFlowEdit", widgets_values: old, inputs: loaded.inputs,
                    outputs: loaded.outputs, properties: {}, flags: {}, mode: 0, order: 0,
                    pos: [0, 0], size: loaded.size});
  const values = Object.fromEntries((loaded.widgets || []).map(w => [w.name, w.value]));
  const core = LiteGraph.createNode("KSampler");
  return {fresh: control(fresh), core: control(core), values};
})
"""


LOADER_INTO_JS = r"""
(async (spec) => {
  app.graph.clear();
  const load = LiteGraph.createNode('STEMVideoLoad'), target = LiteGraph.createNode(spec.target);
  load.pos = [50, 100]; target.pos = [450, 100];
  if (spec.size) target.size = spec.size;
  app.graph.add(load); app.graph.add(target);
  for (const [node, values] of [[load, spec.load], [target, spec.values]])
    for (const [name, v] of Object.entries(values)) node.widgets.find(w => w.name === name).value = v;
  for (const [slot, input] of spec.links) load.connect(slot, target, input);
  await app.queuePrompt(0, 1);
  return target.id;
})
"""


def test_seeds_start_fixed_and_old_values_migrate(page):
    """web/stem.js in the real editor: a new STEM node's seed control is "fixed" (core nodes keep their stock
    default), and widget values saved by the previous version (with a steps widget) land in the right widgets."""
    old = [50, 6.5, 0.75, 0.45, 6, 123, "fixed", "released"]
    res = page.js(f"{SETTINGS_JS}({json.dumps(old)})")
    assert res["fresh"] == "fixed"
    assert res["core"] != "fixed"  # the extension touches STEM nodes only
    assert {k: res["values"][k] for k in ("cfg", "pnp_f_t", "pnp_attn_t", "chunk_size", "seed", "blend")} == \
        {"cfg": 6.5, "pnp_f_t": 0.75, "pnp_attn_t": 0.45, "chunk_size": 6, "seed": 123, "blend": "released"}


def _queue_loader_into(page, target, load, values, links, size=None):
    """Build STEM Load Video -> ``target`` in the editor (widget values by name, links as (loader output slot,
    target input name)), queue it from the editor like the Queue button, and return the target's node id."""
    spec = {"target": target, "load": load, "values": values, "links": links, "size": size}
    node_id = page.js(f"{LOADER_INTO_JS}({json.dumps(spec)})", timeout=60)
    page.js(FIT_JS)
    return node_id


PREVIEW_STATE_JS = r"""
((id) => {
  app.canvas.draw(true, true);
  const node = app.graph.getNodeById(id);
  const out = app.nodeOutputs[id];
  const widget = node.widgets?.find(w => w.name === '$$comfy_animation_preview');
  const imgs = widget ? [...widget.element.querySelectorAll('img')] : [];
  return {output: out ?? null,
          imgs: imgs.map(i => { const r = i.getBoundingClientRect();
                                return {src: i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                                        shown: r.width > 0, rect: [r.x, r.y, r.width, r.height]}; })};
})
"""


def test_save_video_preview_plays(page, server, server_input, tmp_path):
    """STEM Save Video in the stock (pinned) editor: queued from the editor, its result shows as an animated
    <img> (the pinned frontend plays animated WEBPs, it has no <video>), and the saved mp4 is H.264 + AAC."""
    import av
    page.events.clear()
    node_id = _queue_loader_into(
        page, "STEMSaveVideo", {"video": server_input("man-skiing.mp4"), "custom_width": 64, "frame_load_cap": 12},
        {"fps": 29.97, "filename_prefix": "STEM_browser/preview", "format": "mp4"}, [(0, "images"), (3, "audio")],
        size=[360, 420])
    deadline, state = time.monotonic() + 180, None
    while time.monotonic() < deadline:
        state = page.js(f"{PREVIEW_STATE_JS}({node_id})")
        if any(i["complete"] and i["w"] > 0 for i in state["imgs"]):
            break
        time.sleep(0.5)
    assert state and state["output"], f"STEM Save Video produced no UI output in the editor; page errors {page.errors()}"
    shown = [i for i in state["imgs"] if i["complete"] and i["w"] > 0]
    assert shown, f"no loaded preview image on the node: {state}"
    img = shown[0]
    assert ".webp" in img["src"] and "preview=" not in img["src"] and img["shown"], img  # served raw: it animates
    assert (img["w"], img["h"]) == (64, 64)
    data = _NO_PROXY.open(img["src"], timeout=30).read()
    from PIL import Image
    anim = Image.open(io.BytesIO(data))
    assert anim.is_animated and anim.n_frames == 12
    # playing: the pixels on screen change over time (12 frames at ~30 fps loop in 0.4 s)
    x, y, w, h = img["rect"]
    shots = set()
    for _ in range(6):
        shots.add(page.call("Page.captureScreenshot", format="png",
                            clip={"x": x, "y": y, "width": w, "height": h, "scale": 1})["data"])
        time.sleep(0.13)
    assert len(shots) >= 2, "the preview shows the same picture for 0.8 s: it does not play"

    saved = state["output"]["stem_video"][0]
    query = urllib.parse.urlencode({k: saved[k] for k in ("filename", "subfolder", "type")})
    mp4 = tmp_path / saved["filename"]
    mp4.write_bytes(_NO_PROXY.open(f"http://{server.address}/view?{query}", timeout=30).read())
    with av.open(str(mp4)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"
        frames = sum(1 for _ in c.decode(video=0))
    with av.open(str(mp4)) as c:
        audio_s = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
    assert frames == 12 and abs(audio_s - 12 / 29.97) <= 1 / 29.97  # within one frame
    _screenshot(page, "save_video_preview")
    print(f"preview {img['w']}x{img['h']} animated webp ({anim.n_frames} frames, {len(shots)} distinct pictures in 6 "
          f"screenshots) on the node; mp4 h264+aac, "
          f"{frames} frames, audio {audio_s:.3f} s")


METRICS_STATE_JS = r"""
((id) => {
  app.canvas.draw(true, true);
  const node = app.graph.getNodeById(id);
  const report = node.widgets?.find(w => w.name === 'stem_report');
  const el = report?.inputEl ?? report?.element;
  const r = el?.getBoundingClientRect();
  const p = (async () => (await app.graphToPrompt()).output[id].inputs)();
  return p.then(inputs => ({
    text: el?.value ?? null, readOnly: el?.readOnly ?? null, visible: !!r && r.width > 0 && r.height > 0,
    imgs: (node.imgs || []).map(i => ({src: i.src, w: i.naturalWidth})), promptInputs: Object.keys(inputs)}));
})
"""


def test_metrics_report_text_and_curve_on_node(page, server_input):
    """STEM Video Metrics in the pinned editor: the report shows as read-only text on the node (web/stem_text.js),
    is not sent back with the prompt, and the per-frame curve is drawn as the node's image."""
    page.events.clear()
    node_id = _queue_loader_into(
        page, "STEMVideoMetrics", {"video": server_input("wolf.mp4"), "custom_width": 64, "frame_load_cap": 6},
        {"label": "browser probe", "filename_prefix": "STEM_browser/metrics"}, [(0, "source"), (0, "result")])
    deadline, state = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        state = page.js(f"{METRICS_STATE_JS}({node_id})")
        # the curve is 800 px wide; a current frontend may first show the previous test's picture on the node
        # that reuses its id
        if state["text"] and any(i["w"] == 800 for i in state["imgs"]):
            break
        time.sleep(0.5)
    assert state["text"], f"no report text on the node: {state}; page errors {page.errors()}"
    assert "browser probe" in state["text"] and "psnr" in state["text"].lower()
    assert state["readOnly"] is True and state["visible"]
    assert "stem_report" not in state["promptInputs"], state["promptInputs"]
    assert any(i["w"] == 800 for i in state["imgs"]), f"the curve is not drawn on the node: {state['imgs']}"
    _screenshot(page, "metrics_report")
    assert not [e for e in page.errors() if "favicon" not in str(e)], page.errors()
    print(f"metrics report on the node: {len(state['text'].splitlines())} lines; curve {state['imgs'][0]['w']} px wide")


PACK_FOLDER = "comfyui_stem"  # the pack's folder name in custom_nodes: the Templates menu's category for it
OPEN_TEMPLATES_JS = r"""
(async (category) => {
  document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click());
  await new Promise(r => setTimeout(r, 300));
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  const until = async (f, ms) => { for (let t = 0; t < ms; t += 100) { const v = f(); if (v) return v;
                                                                     await new Promise(r => setTimeout(r, 100)); } };
  const entry = await until(() => [...document.querySelectorAll('.p-dialog li.p-listbox-option')]
                                   .find(e => e.textContent.trim() === category), 10000);
  if (!entry) return {categories: [...document.querySelectorAll('.p-dialog li.p-listbox-option')]
                                  .map(e => e.textContent.trim()), cards: []};
  entry.click();
  await until(() => document.querySelector('[data-testid^=template-workflow-]'), 10000);
  await new Promise(r => setTimeout(r, 500));
  return {cards: [...document.querySelectorAll('[data-testid^=template-workflow-]')]
                   .map(e => e.getAttribute('data-testid').slice('template-workflow-'.length))};
})
"""
PICK_TEMPLATE_JS = r"""
(async (name) => {
  const until = async (f, ms) => { for (let t = 0; t < ms; t += 100) { const v = f(); if (v) return v;
                                                                     await new Promise(r => setTimeout(r, 100)); } };
  const card = document.querySelector(`[data-testid="template-workflow-${name}"]`);
  card.scrollIntoView();
  const img = card.querySelector('img');
  const thumb = await until(() => img && img.complete && img.naturalWidth > 0 && img.naturalWidth, 15000);
  const before = app.graph._nodes.map(n => n.id).join();
  card.click();
  await until(() => app.extensionManager.workflow.activeWorkflow?.filename === name
                    && !document.querySelector('[data-testid^=template-workflow-]'), 20000);
  await new Promise(r => setTimeout(r, 500));
  const dialogs = [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.trim()).filter(t => t);
  return {thumb: thumb || 0, workflow: app.extensionManager.workflow.activeWorkflow?.filename ?? null, dialogs,
          nodes: app.graph._nodes.map(n => ({id: n.id, type: n.type,
                                             values: (n.widgets || []).map(w => w.value ?? null)}))};
})
"""


def test_examples_load_from_the_templates_menu(page, server):
    """Current frontends (ComfyUI 0.3.12 and later): Workflow > Browse Templates lists the pack's category with
    each example once and its thumbnail, and picking one loads exactly that graph into the editor. The pinned
    2024-03 host has no Templates menu (test_workflow_in_browser loads the same files by drag-and-drop there)."""
    status, _ = cc._http("GET", f"http://{server.address}/api/workflow_templates")
    if status == 404:
        pytest.skip("this host's frontend has no Templates menu (ComfyUI 0.3.12 added it; the pinned a28a9dc8 of "
                    "2024-03 predates it): run with COMFYUI_DIR=<a current ComfyUI>")
    info = _object_info(server)
    listing = page.js(f"{OPEN_TEMPLATES_JS}({json.dumps(PACK_FOLDER)})", timeout=60)
    assert sorted(listing["cards"]) == sorted(p.stem for p in WORKFLOWS), \
        f"the Templates menu's {PACK_FOLDER} category shows {listing}"
    loaded, skipped = [], []
    for path in WORKFLOWS:
        ui = json.loads(path.read_text())
        if any(cls not in info for cls in optional_nodes(ui)):
            skipped.append(path.stem)  # its optional nodes (VideoHelperSuite) are not installed here
            continue
        page.js(f"{OPEN_TEMPLATES_JS}({json.dumps(PACK_FOLDER)})", timeout=60)
        res = page.js(f"{PICK_TEMPLATE_JS}({json.dumps(path.stem)})", timeout=60)
        assert res["thumb"] > 0, f"{path.stem}: its thumbnail did not load in the Templates menu"
        assert res["workflow"] == path.stem, f"{path.stem}: the editor opened {res['workflow']}"
        assert not any("missing" in d.lower() or "not found" in d.lower() for d in res["dialogs"]), res["dialogs"]
        got = {n["id"]: n["type"] for n in res["nodes"]}
        assert got == {n["id"]: n["type"] for n in ui["nodes"]}, f"{path.stem}: the editor loaded {got}"
        note = next(n for n in res["nodes"] if n["type"] == "Note")
        assert note["values"][0] == next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
        loaded.append(path.stem)
    assert loaded, "no example could be loaded from the Templates menu"
    _screenshot(page, "templates_menu_last_loaded")
    print(f"Templates menu: {len(listing['cards'])} examples listed once each; loaded by clicking: {loaded}; "
          f"not loaded (optional nodes not installed): {skipped}")


PROGRESS_GRAPH_JS = r"""
(async (spec) => {
  app.graph.clear();
  const add = (type, pos, values) => {
    const n = LiteGraph.createNode(type); n.pos = pos; app.graph.add(n);
    for (const [name, v] of Object.entries(values || {})) n.widgets.find(w => w.name === name).value = v;
    return n; };
  const model = add('STEMTinyTestModel', [20, 40]);
  const load = add('STEMVideoLoad', [20, 300], spec.load);
  const encode = add('VAEEncode', [380, 300]);
  const text = add('CLIPTextEncode', [380, 40], {text: 'a video'});
  const invert = add('STEMInvert', [720, 40], {steps: spec.steps});
  const decode = add('VAEDecode', [1060, 40]);
  const preview = add('PreviewImage', [1300, 40]);
  load.connect(0, encode, 'pixels'); model.connect(2, encode, 'vae'); model.connect(1, text, 'clip');
  model.connect(0, invert, 'model'); encode.connect(0, invert, 'latent'); text.connect(0, invert, 'source_conditioning');
  invert.connect(0, decode, 'samples'); model.connect(2, decode, 'vae'); decode.connect(0, preview, 'images');
  // what the editor draws its progress bar from (app.js drawNodeShape: app.progress on app.runningNodeId),
  // recorded at every assignment
  window.__stemProgress = [];
  window.__stemBar = null;
  let current = app.progress;
  Object.defineProperty(app, 'progress', {configurable: true, get() { return current; }, set(p) {
    current = p;
    if (!p) return;
    window.__stemProgress.push({value: p.value, max: p.max, node: +app.runningNodeId});
    if (+app.runningNodeId === invert.id && p.value === Math.ceil(p.max / 2)) {
      // the bar as drawn at that moment: green pixels along the top of the running node
      app.canvas.draw(true, true);
      const [x, y] = app.canvas.ds.convertOffsetToCanvas([invert.pos[0], invert.pos[1]]);
      const w = invert.size[0] * app.canvas.ds.scale;
      const data = app.canvas.canvas.getContext('2d').getImageData(x, y + 1, w, 3).data;
      let green = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i + 1] > 100 && data[i] < 60 && data[i + 2] < 60) green++;
      window.__stemBar = {green: green / 3, width: w};
    }
  }});
  // current frontends draw the bar from the node's own progress (a fraction), set from progress_state events
  let own;
  window.__stemNodeProgress = [];
  Object.defineProperty(invert, 'progress', {configurable: true, get() { return own; }, set(v) {
    own = v;
    if (v !== undefined && v !== null) window.__stemNodeProgress.push(v);
  }});
  await app.queuePrompt(0, 1);
  return {invert: invert.id, preview: preview.id};
})
"""


def test_progress_bar_advances_per_step(page, server_input):
    """Queued from the editor, STEM Invert's steps reach the editor's progress bar, one per step. The pinned
    editor draws it from app.progress on the running node: that takes every step 1..N of N there, and midway
    the bar is drawn as green pixels over about half the node's width. Current frontends draw it from the
    node's own progress fraction: that takes every k/N."""
    page.events.clear()
    steps = 8
    load = {"video": server_input("wolf.mp4"), "custom_width": 64, "custom_height": 64, "frame_load_cap": 4}
    ids = page.js(f"{PROGRESS_GRAPH_JS}({json.dumps({'steps': steps, 'load': load})})", timeout=60)
    page.js(FIT_JS)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not page.js(f"!!app.nodeOutputs[{ids['preview']}]"):
        time.sleep(0.5)
    samples = page.js("(() => { const p = app.progress; delete app.progress; app.progress = p; "
                      "return window.__stemProgress; })()")
    fractions = page.js("window.__stemNodeProgress")
    bar = page.js("window.__stemBar || null")
    assert page.js(f"!!app.nodeOutputs[{ids['preview']}]"), f"the graph did not finish; page errors {page.errors()}"
    if samples:  # the pinned editor: app.progress, drawn as a green bar on the running node
        on_invert = [(s["value"], s["max"]) for s in samples if s["node"] == ids["invert"]]
        assert on_invert == [(k, steps) for k in range(1, steps + 1)], samples
        assert bar and 0.3 * bar["width"] <= bar["green"] <= 0.7 * bar["width"], bar
        print(f"progress on STEM Invert: {on_invert}; bar midway {bar['green']:.0f} of {bar['width']:.0f} px green")
    else:  # current frontends: the node's own progress fraction
        assert [f for f in fractions if f] == [k / steps for k in range(1, steps + 1)], fractions
        print(f"progress on STEM Invert (node fraction): {fractions}")
