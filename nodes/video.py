"""STEM Load Video (a video file or frame folder from ComfyUI's input folder -> IMAGE batch, frame count, fps,
audio, description) and STEM Save Video. All decoding and encoding lives in stem_core/video_io.py."""
import os

import torch
from PIL import Image

from ..stem_core.errors import STEMError, VideoLoadError
from ..stem_core.video_io import (DEFAULT_FOLDER_FPS, MAX_SIDE, SIZE_MODES, content_hash, list_inputs, load_video,
                                  resolve_in_input_dir, write_video)
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
        # Changing the file on disk re-runs the node; re-queueing identical content is served from cache.
        try:
            return content_hash(_resolve(video))
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
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The frames to save."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 0.1, "max": 240.0, "step": 0.01,
                              "tooltip": "Frame rate of the file (connect STEM Load Video's fps)."}),
            "filename_prefix": ("STRING", {"default": "STEM/video", "tooltip":
                                           "File name prefix inside ComfyUI's output folder."}),
        }}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = host.category("video")
    TITLE = "STEM Save Video (mp4)"
    DESCRIPTION = "Saves the frames as an mp4 and shows the first frame as a preview."

    def save(self, images, fps, filename_prefix):
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] < 1:
            raise STEMError("expected an IMAGE batch [frames, H, W, 3] with at least one frame", input_name="images")
        if not fps > 0:
            raise STEMError(f"must be > 0, got {fps}", input_name="fps")
        folder, base, subfolder = host.output_path(filename_prefix, images.shape[2], images.shape[1])
        write_video(images, os.path.join(folder, base + ".mp4"), float(fps), on_frame=host.Progress(images.shape[0]))
        first = (images[0, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        Image.fromarray(first).save(os.path.join(folder, base + ".png"))
        return {"ui": {"images": [{"filename": base + ".png", "subfolder": subfolder, "type": "output"}],
                       "videos": [{"filename": base + ".mp4", "subfolder": subfolder, "type": "output",
                                   "format": "video/mp4", "frame_rate": float(fps), "frames": int(images.shape[0])}]}}


NODE_CLASS_MAPPINGS = {"STEMVideoLoad": STEMVideoLoad, "STEMSaveVideo": STEMSaveVideo}
