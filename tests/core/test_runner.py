"""scripts/run_workflow.py without a server: overrides, workflow checks and error texts."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_workflow", ROOT / "scripts" / "run_workflow.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_workflow", mod)
    spec.loader.exec_module(mod)
    return mod


rw = _load_runner()


def small_workflow():
    return {
        "1": {"class_type": "STEMTinyTestModel", "inputs": {"seed": 0}, "_meta": {"title": "Tiny model"}},
        "2": {"class_type": "STEMVideoLoad", "inputs": {"video": "demo.mp4", "frame_load_cap": 8}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a car", "clip": ["1", 1]},
              "_meta": {"title": "Source Prompt"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red car", "clip": ["1", 1]},
              "_meta": {"title": "STEM target prompt (edit)"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly, blurry", "clip": ["1", 1]},
              "_meta": {"title": "Negative prompt"}},
        "6": {"class_type": "STEMInvert", "inputs": {"model": ["1", 0], "vae": ["1", 2], "images": ["2", 0],
                                                     "positive": ["3", 0], "steps": 50}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "stem"}},
    }


def test_video_and_prompts_by_title():
    wf = small_workflow()
    changes = []
    out = rw.apply_overrides(wf, video="clip.mp4", source_prompt="a dog", target_prompt="a cat",
                             changes=changes)
    assert out["2"]["inputs"]["video"] == "clip.mp4"
    assert out["3"]["inputs"]["text"] == "a dog"
    assert out["4"]["inputs"]["text"] == "a cat"
    assert out["5"]["inputs"]["text"] == "ugly, blurry"
    assert out["3"]["inputs"]["clip"] == ["1", 1]
    assert len(changes) == 3
    # the input is not modified
    assert wf == small_workflow()


def test_prompts_marked_by_node_id():
    wf = {
        "source_prompt": {"class_type": "CLIPTextEncode", "inputs": {"text": "x"}},
        "target-prompt": {"class_type": "CLIPTextEncode", "inputs": {"text": "y"}},
        "9": {"class_type": "SaveImage", "inputs": {}},
    }
    out = rw.apply_overrides(wf, source_prompt="s", target_prompt="t")
    assert out["source_prompt"]["inputs"]["text"] == "s"
    assert out["target-prompt"]["inputs"]["text"] == "t"


def test_unmarked_prompt_raises_with_what_exists():
    wf = small_workflow()
    wf["4"]["_meta"]["title"] = "CLIP Text Encode (Prompt)"
    with pytest.raises(rw.WorkflowError, match=r"target prompt.*Text encoders found: 3 \(CLIPTextEncode"):
        rw.apply_overrides(wf, target_prompt="a cat")
    with pytest.raises(rw.WorkflowError, match="no STEMVideoLoad"):
        rw.apply_overrides({"1": {"class_type": "SaveImage", "inputs": {}}}, video="x.mp4")


def test_checkpoint_rewires_tiny_model():
    wf = small_workflow()
    wf["8"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "old.safetensors"}}
    out = rw.apply_overrides(wf, checkpoint="v1-5-pruned-emaonly.safetensors")
    assert out["1"]["class_type"] == "CheckpointLoaderSimple"
    assert out["1"]["inputs"] == {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}
    assert "STEMTinyTestModel" in out["1"]["_meta"]["title"]
    assert out["8"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    # links keep pointing at the same id and slots MODEL=0, CLIP=1, VAE=2
    assert out["6"]["inputs"]["model"] == ["1", 0]
    assert out["6"]["inputs"]["vae"] == ["1", 2]
    assert out["3"]["inputs"]["clip"] == ["1", 1]


def test_checkpoint_refuses_unknown_slot_or_no_loader():
    wf = small_workflow()
    wf["6"]["inputs"]["extra"] = ["1", 3]
    with pytest.raises(rw.WorkflowError, match="slot 3"):
        rw.apply_overrides(wf, checkpoint="x.safetensors")
    with pytest.raises(rw.WorkflowError, match="no CheckpointLoaderSimple"):
        rw.apply_overrides({"1": {"class_type": "SaveImage", "inputs": {}}}, checkpoint="x.safetensors")


def test_set_values():
    out = rw.apply_overrides(small_workflow(), sets=["6.steps=10", "7.filename_prefix=run 1", "6.flag=true",
                                                     '6.model=["8", 0]', "6.tau=0.05", "2.video=a=b.mp4"])
    assert out["6"]["inputs"]["steps"] == 10
    assert out["7"]["inputs"]["filename_prefix"] == "run 1"
    assert out["6"]["inputs"]["flag"] is True
    assert out["6"]["inputs"]["model"] == ["8", 0]
    assert out["6"]["inputs"]["tau"] == 0.05
    assert out["2"]["inputs"]["video"] == "a=b.mp4"
    # --set is applied last, after the named overrides
    assert rw.apply_overrides(small_workflow(), video="v.mp4", sets=["2.video=w.mp4"])["2"]["inputs"]["video"] == "w.mp4"
    with pytest.raises(rw.WorkflowError, match="no node '99'"):
        rw.apply_overrides(small_workflow(), sets=["99.steps=1"])
    with pytest.raises(rw.WorkflowError, match="NODE_ID.INPUT=VALUE"):
        rw.apply_overrides(small_workflow(), sets=["steps=1"])


def test_load_workflow_refuses_ui_format(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 3, "nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(rw.WorkflowError, match="UI-format"):
        rw.load_workflow(str(ui))
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"prompt": small_workflow()}))
    assert rw.load_workflow(str(api))["7"]["class_type"] == "SaveImage"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(rw.WorkflowError, match="not valid JSON"):
        rw.load_workflow(str(bad))


def test_format_prompt_error_lists_node_errors():
    response = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "Required input is missing: images", "extra_info": {}},
        "node_errors": {
            "7": {"errors": [{"type": "required_input_missing", "message": "Required input is missing",
                              "details": "images", "extra_info": {}}],
                  "dependent_outputs": ["7"], "class_type": "SaveImage"},
            "6": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                              "details": "method: 'foo' not in ['stem', 'ddim']"}],
                  "dependent_outputs": ["7"], "class_type": "STEMInvert"},
        },
    }
    text = rw.format_prompt_error(response, small_workflow())
    lines = text.splitlines()
    assert lines[0] == "ComfyUI rejected the prompt: Prompt outputs failed validation"
    assert "node 6 (STEMInvert):" in lines  # sorted by id
    assert lines.index("node 6 (STEMInvert):") < lines.index("node 7 (SaveImage):")
    assert "  - Required input is missing: images" in lines
    assert "  - Value not in list: method: 'foo' not in ['stem', 'ddim']" in lines

    no_out = {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""},
              "node_errors": []}
    assert rw.format_prompt_error(no_out) == "ComfyUI rejected the prompt: Prompt has no outputs"
    assert "no prompt" in rw.format_prompt_error({"error": "no prompt", "node_errors": []})
    assert "500 Internal" in rw.format_prompt_error("500 Internal Server Error")


def test_format_execution_error():
    data = {"prompt_id": "p", "node_id": "6", "node_type": "STEMInvert", "executed": ["1", "2"],
            "exception_message": "frames differ in size", "exception_type": "ValueError",
            "traceback": ['  File "a.py", line 1, in f\n', "    raise ValueError()\n"]}
    text = rw.format_execution_error(data)
    assert text.splitlines()[0] == "Execution failed in node 6 (STEMInvert): ValueError: frames differ in size"
    assert 'File "a.py"' in text


def test_output_collection_and_safe_paths():
    outputs = {
        "7": {"images": [{"filename": "stem_00001_.png", "subfolder": "", "type": "output"}]},
        "9": {"gifs": [{"filename": "edit.mp4", "subfolder": "videos/../x", "type": "output", "format": "video/h264"}],
              "text": ["PSNR 31.2 dB"]},
    }
    files = rw._output_files(outputs)
    assert {f["filename"] for f in files} == {"stem_00001_.png", "edit.mp4"}
    assert rw._output_texts(outputs) == [("9", "PSNR 31.2 dB")]
    out = Path("/tmp/out")
    assert rw.local_output_path(str(out), files[1]) == str(out / "videos" / "x" / "edit.mp4")
    evil = {"filename": "../../etc/passwd", "subfolder": "../..", "type": "output"}
    assert rw.local_output_path(str(out), evil) == str(out / "passwd")


def test_server_address_forms():
    assert rw._base("127.0.0.1:8188") == ("http://127.0.0.1:8188", "ws://127.0.0.1:8188")
    assert rw._base("http://localhost:8000/") == ("http://localhost:8000", "ws://localhost:8000")
    assert rw._base("https://example.org") == ("https://example.org", "wss://example.org")
    with pytest.raises(rw.WorkflowError, match="bad server address"):
        rw._base("ftp://x")


def test_cli_bad_override_exits_2(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(small_workflow()))
    assert rw.main([str(path), "--set", "42.steps=1"]) == 2
    assert "no node '42'" in capsys.readouterr().err
