"""The API twins (workflows/api/X.json) stay in sync with the UI workflows (workflows/ui/X.json).

Each UI file is converted with scripts/workflow_format.ui_to_api, using node specs taken from the
running server's /object_info (the real node classes of the pack and of ComfyUI), and must equal its
twin exactly. Regenerate both with `.venv/bin/python scripts/build_workflows.py`.
"""
import copy
import json

import pytest

from tests.conftest import REPO

import comfy_client as cc  # noqa: E402
from tests.e2e.conftest import skip_without_optional_nodes
from workflow_format import FRONTEND_ONLY, input_specs, ui_to_api  # noqa: E402

UI_FILES = sorted((REPO / "workflows" / "ui").glob("*.json"))
API_DIR = REPO / "workflows" / "api"
FIX = "regenerate both with `.venv/bin/python scripts/build_workflows.py`"


@pytest.fixture(scope="module")
def specs(server):
    info = json.loads(cc._http("GET", f"http://{server.address}/object_info")[1])
    out = {}
    for cls, d in info.items():
        names = d.get("output_name") or d.get("output") or []
        out[cls] = {"inputs": input_specs(d.get("input") or {}), "outputs": list(zip(names, d.get("output") or [])),
                    "title": d.get("display_name") or cls}
    return out


def diff(a: dict, b: dict) -> str:
    lines = []
    for k in sorted(set(a) | set(b), key=lambda s: (len(s), s)):
        if a.get(k) != b.get(k):
            lines.append(f"  node {k}:\n    from UI: {json.dumps(a.get(k))}\n    twin:    {json.dumps(b.get(k))}")
    return "\n".join(lines)


def test_every_ui_workflow_has_a_twin_and_back():
    assert UI_FILES, "no workflows/ui/*.json"
    ui_names = {p.stem for p in UI_FILES}
    api_names = {p.stem for p in API_DIR.glob("*.json")}
    assert ui_names == api_names, (f"UI workflows without an API twin: {sorted(ui_names - api_names)}; "
                                   f"API twins without a UI workflow: {sorted(api_names - ui_names)}; {FIX}")


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_api_twin_matches_ui(specs, path):
    ui = json.loads(path.read_text())
    skip_without_optional_nodes(specs, ui)
    unknown = sorted({n["type"] for n in ui["nodes"]} - set(specs) - FRONTEND_ONLY)
    assert not unknown, f"{path.name}: node types the server does not know: {unknown}"
    twin_path = API_DIR / path.name
    assert twin_path.exists(), f"{path.name} has no API twin {twin_path.relative_to(REPO)}; {FIX}"
    converted = ui_to_api(ui, specs)
    twin = json.loads(twin_path.read_text())
    assert converted == twin, f"workflows/api/{path.name} drifted from workflows/ui/{path.name}:\n{diff(converted, twin)}\n{FIX}"


def test_drift_is_detected(specs):
    """The check above is not vacuous: changing one widget value in the UI file breaks equality."""
    path = REPO / "workflows" / "ui" / "stem_reconstruction.json"  # core nodes and the pack's only
    ui = json.loads(path.read_text())
    twin = json.loads((API_DIR / path.name).read_text())
    changed = copy.deepcopy(ui)
    node = next(n for n in changed["nodes"] if n.get("widgets_values") and n["type"] not in FRONTEND_ONLY)
    first = node["widgets_values"][0]
    node["widgets_values"][0] = (first + 1) if isinstance(first, (int, float)) and not isinstance(first, bool) \
        else f"{first}-changed"
    assert ui_to_api(changed, specs) != twin
