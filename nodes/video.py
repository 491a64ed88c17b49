"""STEM Load Video (a video file or frame folder from ComfyUI's input folder -> IMAGE batch, frame count, fps,
audio, description) and STEM Save Video (mp4 with audio / webp / gif, playing on the node). All decoding and
encoding lives in stem_core/video_io.py."""
import os

import torch

from ..stem_core.errors import STEMError, VideoLoadError
from ..stem_core.video_io import (DEFAULT_FOLDER_FPS, MAX_SIDE, SIZE_MODES, VIDEO_FORMATS, change_signature,
                                  list_inputs, load_video, resolve_in_input_dir, write_video)
from . import host


def _resolve(video: str):
    """Real path of `video` inside the input folder; VideoLoadError when outside or missing."""
    root = host.input_dir()
    path = resolve_in_input_dir(video, root)
    if not path.exists():
        raise VideoLoadError(
            f"video '{video}' not found in ComfyUI's input folder {root}; put the file (or frame "
            f"folder) there, upload it, or pick another entry")
    return path


class STEMVideoLoad:
    TITLE = "STEM Load Video"
    CATEGORY = host.category("video")
    DESCRIPTION = ("Loads a video file (mp4, webm, mkv, mov, avi, gif, m4v) or a folder of images from ComfyUI's "
                   "input folder as an IMAGE batch; the size is always made a multiple of 8.")
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT", "AUDIO", "STRING")
    RETURN_NAMES = ("IMAGE", "frame_count", "fps", "audio", "video_info")
    OUTPUT_TOOLTIPS = (
        "The selected frames, float32 RGB [frames, height, width, 3] in 0..1.",
        "Number of frames in IMAGE.",
        "Frames per second: force_rate when set, else the source rate "
        f"({DEFAULT_FOLDER_FPS:g} for a frame folder).",
        "The audio track {waveform [1, channels, samples], sample_rate}, trimmed to the selected frames; "
        "None when the file has no audio (frame folders never have any).",
        "A short human-readable description of what was loaded.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        # Upload: "video_upload" is the flag current ComfyUI frontends read to put an upload button and a
        # video preview on a combo (uploads go through /upload/image into the input folder). The pinned
        # 2024-03 frontend only adds its IMAGEUPLOAD button to an input literally named "image" and accepts
        # only image files there, so on that host copy files (or frame folders) into the input folder,
        # or POST them to /upload/image (the server stores any file), then refresh the list.
        videos = list_inputs(host.input_dir())
        return {
            "required": {
                "video": (videos, {"video_upload": True, "tooltip":
                          "A video file or a folder of images (00000.png, 00001.png, ...) inside ComfyUI's "
                          "input folder. Frame folders have no timing: fps is "
                          f"{DEFAULT_FOLDER_FPS:g}, or force_rate when set."}),
                "force_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 1.0, "tooltip":
                               "0 keeps the source frame rate. Otherwise frames are dropped or repeated to "
                               "this rate (frames per second); for a frame folder it only sets fps."}),
                "custom_width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip":
                                 "0 keeps the width. If only one of width/height is set the other keeps the "
                                 "aspect ratio. The result is rounded to a multiple of 8 (see size_mode)."}),
                "custom_height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip":
                                  "0 keeps the height. If only one of width/height is set the other keeps the "
                                  "aspect ratio. The result is rounded to a multiple of 8 (see size_mode)."}),
                "frame_load_cap": ("INT", {"default": 0, "min": 0, "max": 100000, "step": 1, "tooltip":
                                   "Load at most this many frames (0 = all). Decoding stops once reached."}),
                "skip_first_frames": ("INT", {"default": 0, "min": 0, "max": 1000000, "step": 1, "tooltip":
                                      "Skip this many frames at the start (counted after force_rate)."}),
                "select_every_nth": ("INT", {"default": 1, "min": 1, "max": 1000, "step": 1, "tooltip":
                                     "Keep every n-th frame after the skipped ones (1 = every frame). "
                                     "Does not change fps."}),
                "size_mode": (list(SIZE_MODES), {"default": "resize", "tooltip":
                              "How a size that is not a multiple of 8 is fixed. resize: scale to the nearest "
                              "multiple of 8 (718 -> 720). crop: cut the borders down to the multiple of 8 "
                              "below (718 -> 712), scaling first only when a custom size is set."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, video):
        # Taking `video` here also makes the server skip its own "value not in list" check, so a file
        # uploaded after the list was built is accepted; everything outside the input folder is refused.
        try:
            _resolve(video)
        except VideoLoadError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, video, **kwargs):
        # Like core LoadImage / VideoHelperSuite: a new modification time or size re-runs the node; re-queueing
        # an untouched file is served from cache without reading it (hashing a long clip took seconds per queue).
        try:
            return change_signature(_resolve(video))
        except (VideoLoadError, OSError) as exc:
            return f"unavailable: {exc}"

    def load(self, video, force_rate=0.0, custom_width=0, custom_height=0, frame_load_cap=0,
             skip_first_frames=0, select_every_nth=1, size_mode="resize"):
        path = _resolve(video)
        state = {}

        def on_frame(done, expected):
            if "progress" not in state:
                state["progress"] = host.Progress(expected)
            state["progress"]()

        clip = load_video(path, force_rate=force_rate, custom_width=custom_width, custom_height=custom_height,
                          frame_load_cap=frame_load_cap, skip_first_frames=skip_first_frames,
                          select_every_nth=select_every_nth, size_mode=size_mode, on_frame=on_frame, name=video,
                          available_bytes=host.free_memory_bytes(host.cpu_device()))
        return (clip.frames, clip.frame_count, clip.fps, clip.audio, clip.describe())


class STEMSaveVideo:
    TITLE = "STEM Save Video (mp4 / webp / gif, with audio)"
    CATEGORY = host.category("video")
    DESCRIPTION = ("Saves the frames as an H.264 mp4 (with the audio, if connected, as AAC) or an animated WEBP / "
                   "GIF in the output folder, with the prompt and the workflow in the file, and shows the video "
                   "playing on the node.")
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The frames to save."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 240.0, "step": 0.01,
                              "tooltip": "Frame rate of the file (connect STEM Load Video's fps)."}),
            "filename_prefix": ("STRING", {"default": "STEM/video", "tooltip":
                                           "File name prefix inside ComfyUI's output folder."}),
            "format": (list(VIDEO_FORMATS), {"default": "mp4", "tooltip":
                       "mp4: H.264 (yuv420p) with AAC audio, plays in every browser and player. webp / gif: "
                       "looping animations without sound (gif has 256 colours)."}),
            "crf": ("INT", {"default": 19, "min": 0, "max": 51, "step": 1, "tooltip":
                    "H.264 quality for mp4: 0 is lossless, 17-23 look clean, each +6 roughly halves the size."}),
        }, "optional": {
            "audio": ("AUDIO", {"tooltip": "Sound for the mp4 (STEM Load Video's audio or any ComfyUI AUDIO), "
                                           "trimmed to the frames' duration. webp and gif have no sound."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images, fps, filename_prefix, format="mp4", crf=19, audio=None, prompt=None, extra_pnginfo=None):
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] < 1:
            raise STEMError("expected an IMAGE batch [frames, H, W, 3] with at least one frame", input_name="images")
        frames = int(images.shape[0])
        metadata = host.workflow_metadata(prompt, extra_pnginfo)
        folder, base, subfolder = host.output_path(filename_prefix, images.shape[2], images.shape[1])
        name = f"{base}.{format}"
        progress = host.Progress(frames * (2 if format != "webp" else 1))
        write_video(images, os.path.join(folder, name), float(fps), format=format, crf=crf, audio=audio,
                    metadata=metadata, on_frame=progress)
        saved = {"filename": name, "subfolder": subfolder, "type": "output"}
        if format == "webp":
            shown = saved
        else:
            # The preview is an animated WEBP: the pinned 2024-03 frontend plays animated images (an <img>) but
            # has no <video> and drops an mp4; current frontends would send an mp4 or a GIF to a <video>, which
            # cannot play a GIF. A small copy (at most PREVIEW_SIDE pixels) in the temp folder keeps it light.
            preview_folder, preview_base, preview_sub = host.temp_path("STEM_preview")
            write_video(_preview_frames(images), os.path.join(preview_folder, preview_base + ".webp"), float(fps),
                        format="webp", metadata=metadata, on_frame=progress)
            shown = {"filename": preview_base + ".webp", "subfolder": preview_sub, "type": "temp"}
        # `images` + `animated` is what both stock frontends play; `stem_video` names the saved file (download)
        return {"ui": {"images": [shown], "animated": (True,),
                       "stem_video": [dict(saved, format=format, fps=float(fps), frames=frames,
                                           audio=bool(audio is not None and format == "mp4"))]}}


PREVIEW_SIDE = 512


def _preview_frames(images):
    """IMAGE [N, H, W, C] -> at most PREVIEW_SIDE pixels on the longer side (area-averaged), for the node preview."""
    h, w = int(images.shape[1]), int(images.shape[2])
    scale = PREVIEW_SIDE / max(h, w)
    if scale >= 1:
        return images
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(images[..., :3].movedim(-1, 1).float(), size=size,
                                           mode="area").movedim(1, -1)


NODE_CLASS_MAPPINGS = {"STEMVideoLoad": STEMVideoLoad, "STEMSaveVideo": STEMSaveVideo}
