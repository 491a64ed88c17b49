"""Settings that stay put (issue 14, point 2): the edit nodes take their step count from the trajectory, FateZero
reads the source prompt from the trajectory, every seed is saved "fixed", and workflows saved by the previous
version (an extra `steps` widget value, FateZero's source_prompt) still load in the editor and from the API."""
import inspect
import json
import shutil
import subprocess

import pytest

from tests.conftest import REPO

from workflow_format import node_spec  # noqa: E402

EDIT_NODES = ("STEMTokenFlowEdit", "STEMFateZeroEdit", "STEMReconstruct")

# The inputs and widget values the previous version saved (workflows/api and workflows/ of main before this change)
OLD_API_INPUTS = {
    "STEMTokenFlowEdit": {"model": ["2", 0], "trajectory": ["6", 1], "positive": ["7", 0], "negative": ["8", 0],
                          "steps": 50, "cfg": 7.5, "pnp_f_t": 0.8, "pnp_attn_t": 0.5, "chunk_size": 8, "seed": 0,
                          "source_conditioning": ["4", 0], "source_latent": ["3", 0], "blend": "paper"},
    "STEMFateZeroEdit": {"model": ["5", 0], "trajectory": ["7", 1], "clip": ["2", 1],
                         "source_prompt": "a red disc and a blue square",
                         "target_prompt": "a red disc and a gold square",
                         "blend_words": "square", "blend_threshold": 0.3, "cross_replace_steps": 0.8,
                         "self_replace_steps": 0.5, "reweight": "", "cfg": 7.5, "steps": 50, "latent_blend": False,
                         "release_store": False, "target_blend_words": ""},
}
OLD_WIDGET_VALUES = {
    "STEMTokenFlowEdit": (["steps", "cfg", "pnp_f_t", "pnp_attn_t", "chunk_size", "seed", "control_after_generate",
                           "blend"], [50, 6.5, 0.75, 0.45, 6, 123, "fixed", "released"]),
    "STEMFateZeroEdit": (["source_prompt", "target_prompt", "blend_words", "blend_threshold", "cross_replace_steps",
                          "self_replace_steps", "reweight", "cfg", "steps", "latent_blend", "release_store",
                          "target_blend_words"],
                         ["a red disc", "a gold disc", "disc", 0.25, 0.7, 0.4, "gold:2", 6.0, 50, True, True, "gold"]),
}


def widget_names(spec):
    names = []
    for name, _typ, opts, is_widget, has_control in spec["inputs"]:
        if is_widget:
            names.append(name)
            if has_control:
                names.append("control_after_generate")
    return names


@pytest.fixture(scope="module")
def classes(comfy_host):
    return comfy_host["nodes"].NODE_CLASS_MAPPINGS


@pytest.mark.parametrize("name", EDIT_NODES)
def test_edit_nodes_have_no_steps_widget(classes, name):
    types = classes[name].INPUT_TYPES()
    listed = {**types["required"], **types.get("optional", {})}
    assert "steps" not in listed, f"{name} still asks for steps; they come from the trajectory"
    assert "source_prompt" not in listed


@pytest.mark.parametrize("name", sorted(OLD_API_INPUTS))
def test_old_api_prompts_still_run(comfy_host, classes, name):
    """ComfyUI's executor passes only the inputs INPUT_TYPES lists: an API prompt of the previous version (with
    steps / source_prompt) gives the node a call its FUNCTION accepts, with every required input present."""
    import execution  # the host's executor, on sys.path once ComfyUI is booted
    cls = classes[name]
    old = OLD_API_INPUTS[name]
    outputs = {src: [[object()]] * 4 for src in {v[0] for v in old.values() if isinstance(v, list)}}
    data = execution.get_input_data(old, cls, "9", outputs)
    assert "steps" not in data and "source_prompt" not in data
    required = set(cls.INPUT_TYPES()["required"])
    assert required <= set(data), f"required inputs an old prompt lacks: {sorted(required - set(data))}"
    kwargs = {k: v[0] for k, v in data.items()}
    inspect.signature(getattr(cls, cls.FUNCTION)).bind(cls(), **kwargs)


def test_old_ui_widget_values_migrate(classes):
    """web/stem_migrations.js (run with node) moves the widget values of the previous version into today's widgets:
    every widget that kept its name gets its old value, the new ones their defaults, in today's order."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (JavaScript) is not installed; the migration runs in the browser only")
    script = ("import { migrateWidgetValues } from '" + (REPO / "web" / "stem_migrations.js").as_uri() + "';\n"
              "const cases = JSON.parse(process.argv[1]);\n"
              "const out = {};\n"
              "for (const [type, values] of Object.entries(cases)) {\n"
              "  out[type] = { old: migrateWidgetValues(type, values),"
              " again: migrateWidgetValues(type, migrateWidgetValues(type, values)) };\n"
              "}\n"
              "console.log(JSON.stringify(out));\n")
    cases = {k: v for k, (_, v) in OLD_WIDGET_VALUES.items()}
    res = subprocess.run([node, "--input-type=module", "-e", script, json.dumps(cases)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    migrated = json.loads(res.stdout)
    for type_, (old_names, old_values) in OLD_WIDGET_VALUES.items():
        spec = node_spec(classes[type_])
        names = widget_names(spec)
        values = migrated[type_]["old"]
        assert len(values) == len(names), f"{type_}: {values} for widgets {names}"
        old = dict(zip(old_names, old_values))
        defaults = {n: o.get("default", "") for n, _t, o, w, _c in spec["inputs"] if w}
        for name, value in zip(names, values):
            assert value == old.get(name, defaults.get(name)), f"{type_}.{name}: {value!r}"
        assert migrated[type_]["again"] == values, f"{type_}: migrating a current workflow changed it"


def test_fresh_nodes_get_fixed_seeds_in_the_editor():
    """web/stem.js sets a new STEM node's control widget to "fixed" (the stock default randomizes)."""
    text = (REPO / "web" / "stem.js").read_text()
    assert 'w.value = "fixed"' in text and "control_after_generate" in text
    assert (REPO / "__init__.py").read_text().count('WEB_DIRECTORY = "./web"') == 1


def test_every_seed_saved_fixed_in_the_workflows(classes):
    """The shipped UI workflows carry "fixed" right after every seed value (the editor keeps it on load)."""
    checked = 0
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] not in classes or isinstance(node.get("widgets_values"), dict):
                continue
            names = widget_names(node_spec(classes[node["type"]]))
            for name, value in zip(names, node["widgets_values"]):
                if name == "control_after_generate":
                    assert value == "fixed", f"{path.name} node {node['id']} ({node['type']}): {value}"
                    checked += 1
    assert checked >= 5


def test_source_prompt_comes_from_the_graph(glue):
    host = glue("host")
    graph = {"4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a wolf in the snow", "clip": ["2", 1]}},
             "5": {"class_type": "PrimitiveString", "inputs": {"value": "a fox"}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["5", 0], "clip": ["2", 1]}},
             "7": {"class_type": "STEMInvert", "inputs": {"source_conditioning": ["4", 0]}},
             "8": {"class_type": "STEMInvert", "inputs": {"source_conditioning": ["6", 0]}},
             "9": {"class_type": "STEMInvert", "inputs": {"source_conditioning": ["3", 0]}}}
    assert host.linked_prompt_text(graph, "7", "source_conditioning") == "a wolf in the snow"
    assert host.linked_prompt_text(graph, 8, "source_conditioning") == "a fox"
    assert host.linked_prompt_text(graph, "9", "source_conditioning") is None  # not a text encoder
    assert host.linked_prompt_text(None, "7", "source_conditioning") is None
