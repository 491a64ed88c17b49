"""The runner's client library (scripts/comfy_client.py) and CLI without a server: overrides, workflow
checks, input checks and error texts."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
import comfy_client as cc  # noqa: E402
import run_workflow  # noqa: E402

O = cc.Overrides


def small_workflow():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
              "_meta": {"title": "Load Checkpoint"}},
        "2": {"class_type": "STEMVideoLoad", "inputs": {"video": "demo.mp4", "frame_load_cap": 8, "custom_width": 512,
                                                        "custom_height": 512}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a car", "clip": ["1", 1]},
              "_meta": {"title": "Source Prompt"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red car", "clip": ["1", 1]},
              "_meta": {"title": "STEM target prompt (edit)"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly, blurry", "clip": ["1", 1]},
              "_meta": {"title": "Negative prompt"}},
        "6": {"class_type": "STEMInvert", "inputs": {"model": ["1", 0], "latent": ["9", 0],
                                                     "source_conditioning": ["3", 0], "steps": 50}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "stem"}},
        "8": {"class_type": "STEMVideoMetrics", "inputs": {"source": ["2", 0], "result": ["2", 0], "notice": ""}},
        "9": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
    }


def test_video_and_prompts_by_title():
    wf = small_workflow()
    changes = []
    out = cc.apply_overrides(wf, O(video="clip.mp4", source_prompt="a dog", target_prompt="a cat"), changes)
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
    out = cc.apply_overrides(wf, O(source_prompt="s", target_prompt="t"))
    assert out["source_prompt"]["inputs"]["text"] == "s"
    assert out["target-prompt"]["inputs"]["text"] == "t"


def test_unmarked_prompt_raises_with_what_exists():
    wf = small_workflow()
    wf["4"]["_meta"]["title"] = "CLIP Text Encode (Prompt)"
    with pytest.raises(cc.WorkflowError, match=r"target prompt.*Text encoders found: 3 \(CLIPTextEncode"):
        cc.apply_overrides(wf, O(target_prompt="a cat"))
    with pytest.raises(cc.WorkflowError, match="no STEMVideoLoad"):
        cc.apply_overrides({"1": {"class_type": "SaveImage", "inputs": {}}}, O(video="x.mp4"))


def test_checkpoint_sets_every_loader():
    wf = small_workflow()
    wf["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "old.safetensors"}}
    out = cc.apply_overrides(wf, O(checkpoint="mine.safetensors"))
    assert out["1"]["inputs"]["ckpt_name"] == out["10"]["inputs"]["ckpt_name"] == "mine.safetensors"
    with pytest.raises(cc.WorkflowError, match="no CheckpointLoaderSimple"):
        cc.apply_overrides({"1": {"class_type": "SaveImage", "inputs": {}}}, O(checkpoint="x.safetensors"))
    # an SVD-only graph takes --checkpoint on its ImageOnlyCheckpointLoader
    svd = {"1": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "a"}}}
    assert cc.apply_overrides(svd, O(checkpoint="svd.safetensors"))["1"]["inputs"]["ckpt_name"] == "svd.safetensors"


def test_tiny_model_swaps_the_loader_keeping_links_and_notices_the_reports():
    out = cc.apply_overrides(small_workflow(), O(tiny_model=True))
    assert out["1"]["class_type"] == "STEMTinyTestModel"
    assert out["1"]["inputs"] == {"seed": 0, "model_channels": 32}
    assert "CheckpointLoaderSimple" in out["1"]["_meta"]["title"]
    # links keep pointing at the same id and slots MODEL=0, CLIP=1, VAE=2
    assert out["6"]["inputs"]["model"] == ["1", 0]
    assert out["9"]["inputs"]["vae"] == ["1", 2]
    assert out["3"]["inputs"]["clip"] == ["1", 1]
    assert "TINY RANDOM TEST MODEL" in out["8"]["inputs"]["notice"]
    svd = cc.apply_overrides({"1": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "a"}},
                              "2": {"class_type": "X", "inputs": {"clip_vision": ["1", 1]}}}, O(tiny_model=True))
    assert svd["1"]["class_type"] == "STEMTinySVDModel"


def test_tiny_model_refuses_unknown_slot_no_loader_and_a_checkpoint():
    wf = small_workflow()
    wf["6"]["inputs"]["extra"] = ["1", 3]
    with pytest.raises(cc.WorkflowError, match="slot 3"):
        cc.apply_overrides(wf, O(tiny_model=True))
    with pytest.raises(cc.WorkflowError, match="no checkpoint loader"):
        cc.apply_overrides({"1": {"class_type": "SaveImage", "inputs": {}}}, O(tiny_model=True))
    with pytest.raises(cc.WorkflowError, match="exclude each other"):
        cc.apply_overrides(small_workflow(), O(tiny_model=True, checkpoint="x.safetensors"))


def test_frames_size_steps_set_every_node_that_carries_them():
    wf = small_workflow()
    wf["11"] = {"class_type": "SVD_img2vid_Conditioning", "inputs": {"width": 1024, "height": 576, "video_frames": 14}}
    wf["12"] = {"class_type": "STEMTokenFlowEdit", "inputs": {"steps": 50, "trajectory": ["6", 1]}}
    wf["13"] = {"class_type": "X", "inputs": {"steps": ["6", 0]}}  # a linked steps input is left alone
    out = cc.apply_overrides(wf, O(frames=3, size=(64, 96), steps=2))
    assert out["2"]["inputs"]["frame_load_cap"] == 3 and out["11"]["inputs"]["video_frames"] == 3
    assert (out["2"]["inputs"]["custom_width"], out["2"]["inputs"]["custom_height"]) == (64, 96)
    assert (out["11"]["inputs"]["width"], out["11"]["inputs"]["height"]) == (64, 96)
    assert out["6"]["inputs"]["steps"] == out["12"]["inputs"]["steps"] == 2
    assert out["13"]["inputs"]["steps"] == ["6", 0]
    with pytest.raises(cc.WorkflowError, match="--frames"):
        cc.apply_overrides(wf, O(frames=0))


def test_size_must_be_a_multiple_of_8():
    assert cc.parse_size("128x96") == (128, 96)
    with pytest.raises(cc.WorkflowError, match=r"multiples of 8.*--size 128x128"):
        cc.parse_size("130x125")
    with pytest.raises(cc.WorkflowError, match="WIDTHxHEIGHT"):
        cc.parse_size("big")


def test_edited_frame_goes_to_the_marked_image_loader():
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Edited first frame"}},
          "2": {"class_type": "LoadImage", "inputs": {"image": "y.png"}}}
    out = cc.apply_overrides(wf, O(edited_frame="stem_uploads/f.png"))
    assert out["1"]["inputs"]["image"] == "stem_uploads/f.png" and out["2"]["inputs"]["image"] == "y.png"
    with pytest.raises(cc.WorkflowError, match="edited first frame"):
        cc.apply_overrides({"2": wf["2"]}, O(edited_frame="f.png"))


def test_set_values():
    out = cc.apply_overrides(small_workflow(), O(sets=["6.steps=10", "7.filename_prefix=run 1", "6.flag=true",
                                                       '6.model=["8", 0]', "6.tau=0.05", "2.video=a=b.mp4"]))
    assert out["6"]["inputs"]["steps"] == 10
    assert out["7"]["inputs"]["filename_prefix"] == "run 1"
    assert out["6"]["inputs"]["flag"] is True
    assert out["6"]["inputs"]["model"] == ["8", 0]
    assert out["6"]["inputs"]["tau"] == 0.05
    assert out["2"]["inputs"]["video"] == "a=b.mp4"
    # --set is applied last, after the named overrides
    assert cc.apply_overrides(small_workflow(), O(video="v.mp4", sets=["2.video=w.mp4"]))["2"]["inputs"]["video"] == "w.mp4"
    with pytest.raises(cc.WorkflowError, match="no node '99'"):
        cc.apply_overrides(small_workflow(), O(sets=["99.steps=1"]))
    with pytest.raises(cc.WorkflowError, match="NODE_ID.INPUT=VALUE"):
        cc.apply_overrides(small_workflow(), O(sets=["steps=1"]))


def test_load_workflow_refuses_ui_format(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 3, "nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(cc.WorkflowError, match="UI-format"):
        cc.load_workflow(str(ui))
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"prompt": small_workflow()}))
    assert cc.load_workflow(str(api))["7"]["class_type"] == "SaveImage"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(cc.WorkflowError, match="not valid JSON"):
        cc.load_workflow(str(bad))


def test_video_path_check(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(cc.WorkflowError, match="could not open it as a video"):
        cc.check_video_path(str(text))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(cc.WorkflowError, match="not a video file"):
        cc.check_video_path(str(tmp_path / "notes.txt"))
    with pytest.raises(cc.WorkflowError, match="no such file"):
        cc.check_video_path(str(tmp_path / "missing.mp4"))
    (tmp_path / "frames").mkdir()
    with pytest.raises(cc.WorkflowError, match="holds no images"):
        cc.check_video_path(str(tmp_path / "frames"))


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
    text = cc.format_prompt_error(response, small_workflow())
    lines = text.splitlines()
    assert lines[0] == "ComfyUI rejected the prompt: Prompt outputs failed validation"
    assert "node 6 (STEMInvert):" in lines  # sorted by id
    assert lines.index("node 6 (STEMInvert):") < lines.index("node 7 (SaveImage):")
    assert "  - Required input is missing: images" in lines
    assert "  - Value not in list: method: 'foo' not in ['stem', 'ddim']" in lines

    no_out = {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""},
              "node_errors": []}
    assert cc.format_prompt_error(no_out) == "ComfyUI rejected the prompt: Prompt has no outputs"
    assert "no prompt" in cc.format_prompt_error({"error": "no prompt", "node_errors": []})
    assert "500 Internal" in cc.format_prompt_error("500 Internal Server Error")


def test_format_execution_error():
    data = {"prompt_id": "p", "node_id": "6", "node_type": "STEMInvert", "executed": ["1", "2"],
            "exception_message": "frames differ in size", "exception_type": "ValueError",
            "traceback": ['  File "a.py", line 1, in f\n', "    raise ValueError()\n"]}
    text = cc.format_execution_error(data)
    assert text.splitlines()[0] == "Execution failed in node 6 (STEMInvert): ValueError: frames differ in size"
    assert 'File "a.py"' in text


def test_output_collection_and_safe_paths():
    outputs = {
        "7": {"images": [{"filename": "stem_00001_.png", "subfolder": "", "type": "output"}]},
        "9": {"gifs": [{"filename": "edit.mp4", "subfolder": "videos/../x", "type": "output", "format": "video/h264"}],
              "text": ["PSNR 31.2 dB"]},
    }
    files = cc._output_files(outputs)
    assert {f["filename"] for f in files} == {"stem_00001_.png", "edit.mp4"}
    assert cc._output_texts(outputs) == [("9", "PSNR 31.2 dB")]
    out = Path("/tmp/out")
    assert cc.local_output_path(str(out), files[1]) == str(out / "videos" / "x" / "edit.mp4")
    evil = {"filename": "../../etc/passwd", "subfolder": "../..", "type": "output"}
    assert cc.local_output_path(str(out), evil) == str(out / "passwd")


def test_server_address_forms():
    assert cc._base("127.0.0.1:8188") == ("http://127.0.0.1:8188", "ws://127.0.0.1:8188")
    assert cc._base("http://localhost:8000/") == ("http://localhost:8000", "ws://localhost:8000")
    assert cc._base("https://example.org") == ("https://example.org", "wss://example.org")
    with pytest.raises(cc.WorkflowError, match="bad server address"):
        cc._base("ftp://x")


def test_cli_bad_override_exits_2(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(small_workflow()))
    assert run_workflow.main([str(path), "--set", "42.steps=1"]) == 2
    assert "no node '42'" in capsys.readouterr().err


def test_cli_bad_inputs_exit_2_before_any_server(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(small_workflow()))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert run_workflow.main([str(path), "--video", str(text)]) == 2
    assert "could not open it as a video" in capsys.readouterr().err
    assert run_workflow.main([str(path), "--size", "100x100"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert run_workflow.main([str(path), "--edited-frame", str(tmp_path / "none.png")]) == 2
    assert "no LoadImage node" in capsys.readouterr().err
