"""Faults and load through the real server: Cancel in the middle of a long node, twenty prompts back to back
(resident memory), and ComfyUI's cache (identical prompt -> nothing recomputed; video changed on disk ->
the loader runs again)."""
import copy
import hashlib
import json
import shutil
import time
import urllib.parse
import uuid

import pytest

from tests.conftest import COMFYUI_DIR, REPO
from tests.e2e.test_reconstruction_server import small

import comfy_client as cc  # noqa: E402

API_FILES = sorted((REPO / "workflows" / "api").glob("*.json"))
# Long-running nodes Cancel must be able to stop (each tested once, in the first workflow that has it).
CANCEL_TARGETS = ("STEMInvert", "STEMTokenFlowEdit", "STEMFateZeroEdit")
SHORT_STEPS, LONG_STEPS = 3, 40


def _load(path):
    return json.loads(path.read_text())


def lean(wf, video, frames=4, size=64, steps=SHORT_STEPS, bases=16):
    """small() and leaner: no metrics / video files; a SaveImage after every VAEDecode gives PNG outputs."""
    wf = small(copy.deepcopy(wf), video, frames=frames, size=size, steps=steps)
    for nid in [k for k, n in wf.items() if n["class_type"] in ("STEMVideoMetrics", "STEMSaveVideo")]:
        del wf[nid]
    for nid, n in list(wf.items()):
        if "steps" in n["inputs"] and not isinstance(n["inputs"]["steps"], list):
            n["inputs"]["steps"] = steps
        if n["class_type"] == "STEMBasisEstimate":
            n["inputs"].update(num_bases=bases, iterations=2)
        if n["class_type"] == "VAEDecode":
            wf[f"9{nid}"] = {"class_type": "SaveImage", "inputs": {"images": [nid, 0],
                                                                   "filename_prefix": f"STEM_faults/n{nid}"}}
    return wf


class Tracker:
    """One websocket client: queue prompts, record every message about them."""

    def __init__(self, server):
        import websocket
        self.server = server
        self.http = f"http://{server.address}"
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://{server.address}/ws?clientId={self.client_id}", timeout=10,
                                              http_no_proxy=["127.0.0.1"])
        self.msgs = {}      # prompt_id -> [(type, data)]
        self.done = {}      # prompt_id -> "success" | "error" | "interrupted"

    def queue(self, wf):
        status, raw = cc._http("POST", f"{self.http}/prompt", {"prompt": wf, "client_id": self.client_id})
        assert status == 200, f"/prompt answered {status}: {raw[:500]!r}"
        pid = json.loads(raw)["prompt_id"]
        self.msgs[pid] = []
        return pid

    def pump(self, until, timeout=300.0):
        """Read messages until until(type, data) is true or the time runs out."""
        import websocket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if not isinstance(raw, str):
                continue
            m = json.loads(raw)
            t, d = m.get("type"), m.get("data") or {}
            pid = d.get("prompt_id") if isinstance(d, dict) else None
            if pid in self.msgs:
                self.msgs[pid].append((t, d))
                if t == "executing" and d.get("node") is None:
                    self.done.setdefault(pid, "success")
                elif t == "execution_error":
                    self.done[pid] = "error"
                elif t == "execution_interrupted":
                    self.done[pid] = "interrupted"
            if until(t, d):
                return t, d
        raise TimeoutError(f"no matching websocket message in {timeout} s; finished: {self.done}")

    def wait(self, pid, timeout=300.0):
        if pid not in self.done:
            self.pump(lambda t, d: pid in self.done, timeout)
        return self.done[pid]

    def executed_nodes(self, pid):
        return [d["node"] for t, d in self.msgs[pid] if t == "executing" and d.get("node") is not None]

    def cached_nodes(self, pid):
        return [n for t, d in self.msgs[pid] if t == "execution_cached" for n in d.get("nodes", [])]

    def error(self, pid):
        return next((d for t, d in self.msgs[pid] if t in ("execution_error", "execution_interrupted")), None)

    def output_digests(self, pid):
        """{output node id: [sha256 of each image]} from the history, fetched through /view."""
        hist = json.loads(cc._http("GET", f"{self.http}/history/{pid}")[1])[pid]
        out = {}
        for nid, ui in sorted(hist["outputs"].items()):
            for img in ui.get("images", []):
                q = urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")})
                status, raw = cc._http("GET", f"{self.http}/view?{q}")
                assert status == 200
                out.setdefault(nid, []).append(hashlib.sha256(raw).hexdigest())
        return out

    def close(self):
        self.ws.close()


@pytest.fixture
def tracker(server):
    t = Tracker(server)
    yield t
    t.close()


def _cancel_cases():
    from build_workflows import optional_nodes
    seen, cases = set(), []
    for path in API_FILES:
        if optional_nodes(_load(path)):  # core video nodes / VideoHelperSuite: not on every host
            continue
        for nid, n in sorted(_load(path).items()):
            if n["class_type"] in CANCEL_TARGETS and n["class_type"] not in seen:
                seen.add(n["class_type"])
                cases.append(pytest.param(path, nid, id=f"{path.stem}-{n['class_type']}"))
    return cases


@pytest.mark.parametrize("path,target", _cancel_cases())
def test_cancel_in_the_middle_then_clean_rerun(server, server_input, tracker, path, target):
    video = server_input("wolf.mp4")
    plain = lean(_load(path), video)
    long = lean(_load(path), video, steps=LONG_STEPS)
    cls = plain[target]["class_type"]

    before = tracker.queue(plain)
    assert tracker.wait(before) == "success", tracker.error(before)
    reference = tracker.output_digests(before)
    assert reference, "the plain run produced no images"

    pid = tracker.queue(long)
    t0 = time.monotonic()
    # wait until the target node reports progress (it is really inside its sampling loop) ...
    tracker.pump(lambda t, d: t == "progress" and str(d.get("node")) == target and d.get("value", 0) >= 1
                 and (d.get("prompt_id") in (pid, None)), timeout=240)
    status, _ = cc._http("POST", f"http://{server.address}/interrupt", {})
    assert status == 200
    assert tracker.wait(pid, timeout=120) == "interrupted", f"expected an interrupt, got {tracker.error(pid)}"
    info = tracker.error(pid)
    print(f"{cls}: interrupted {time.monotonic() - t0:.1f} s after queueing, in node {info.get('node_id')} "
          f"({info.get('node_type')})")
    assert str(info.get("node_id")) == target, f"interrupted in {info.get('node_type')}, not in {cls}"
    progress = [d["value"] for t, d in tracker.msgs[pid] if t == "progress" and str(d.get("node")) == target]
    assert max(progress) < LONG_STEPS, "the node ran to the end: the interrupt came too late to test anything"

    # the server is up, and the same plain prompt recomputes the target and gives the identical result
    assert cc._http("GET", f"http://{server.address}/system_stats")[0] == 200
    assert server.process.poll() is None
    after = tracker.queue(plain)
    assert tracker.wait(after) == "success", tracker.error(after)
    assert target in tracker.executed_nodes(after), "the re-run was served from the cache; it proves nothing"
    assert tracker.output_digests(after) == reference, \
        f"the run after the interrupt differs from the run before it: state of the cancelled {cls} leaked"


def test_twenty_prompts_back_to_back_memory_stays_flat(server, server_input, tracker):
    import psutil
    video = server_input("wolf.mp4")
    base = lean(_load(REPO / "workflows" / "api" / "stem_reconstruction.json"), video, frames=4, size=64, steps=2,
                bases=8)
    proc = psutil.Process(server.process.pid)
    pids = []
    for i in range(20):
        wf = copy.deepcopy(base)
        for n in wf.values():
            if n["class_type"] == "STEMBasisEstimate":
                n["inputs"]["seed"] = 1000 + i  # a new seed: nothing downstream of it comes from the cache
        pids.append(tracker.queue(wf))
    t0 = time.monotonic()
    rss = {}
    for k, pid in enumerate(pids):
        status = tracker.wait(pid, timeout=240)
        assert status == "success", f"prompt {k + 1} of 20: {status}: {tracker.error(pid)}"
        rss[k + 1] = proc.memory_info().rss
    elapsed = time.monotonic() - t0
    mib = {k: v / 2**20 for k, v in rss.items()}
    growth = (rss[20] - rss[2]) / rss[2]
    print(f"20 prompts in {elapsed:.1f} s; server RSS after prompt 1: {mib[1]:.0f} MiB, 2: {mib[2]:.0f} MiB, "
          f"10: {mib[10]:.0f} MiB, 20: {mib[20]:.0f} MiB ({100 * growth:+.1f}% from 2 to 20)")
    assert all(tracker.done[p] == "success" for p in pids)
    assert abs(growth) <= 0.10, f"server RSS went from {mib[2]:.0f} MiB to {mib[20]:.0f} MiB ({100 * growth:+.1f}%)"


def test_cache_identical_prompt_and_changed_video(server, server_input, clips, tracker):
    input_dir = COMFYUI_DIR / "input"
    name = "stem_cache_probe.mp4"
    shutil.copy(clips / "wolf.mp4", input_dir / name)
    try:
        wf = lean(_load(REPO / "workflows" / "api" / "stem_reconstruction.json"), name, steps=2, bases=8)
        for n in wf.values():
            if n["class_type"] == "STEMBasisEstimate":
                n["inputs"]["seed"] = 4242  # unlike any other test's prompt
        loader = next(k for k, n in wf.items() if n["class_type"] == "STEMVideoLoad")
        inverter = next(k for k, n in wf.items() if n["class_type"] == "STEMInvert")

        first = tracker.queue(wf)
        assert tracker.wait(first) == "success", tracker.error(first)
        assert {loader, inverter} <= set(tracker.executed_nodes(first))

        again = tracker.queue(copy.deepcopy(wf))
        assert tracker.wait(again) == "success", tracker.error(again)
        ran = set(tracker.executed_nodes(again))
        assert not ran & (set(wf) - {k for k, n in wf.items() if n["class_type"] == "SaveImage"}), \
            f"an identical prompt recomputed {sorted(ran)}"
        assert {loader, inverter} <= set(tracker.cached_nodes(again)), tracker.cached_nodes(again)

        # same name, new content (another clip): IS_CHANGED (content hash) makes the loader and all after it run
        shutil.copy(clips / "truck.mp4", input_dir / name)
        changed = tracker.queue(copy.deepcopy(wf))
        assert tracker.wait(changed) == "success", tracker.error(changed)
        ran = set(tracker.executed_nodes(changed))
        assert {loader, inverter} <= ran, f"after changing the file only {sorted(ran)} ran"
        print(f"identical prompt: cached {sorted(tracker.cached_nodes(again))}, executed "
              f"{sorted(tracker.executed_nodes(again))}; changed video: executed {sorted(ran)}")
    finally:
        (input_dir / name).unlink(missing_ok=True)
