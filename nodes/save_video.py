"""STEMSaveVideo: writes IMAGE frames as an mp4 in ComfyUI's output folder (plus a preview PNG)."""
import os

import cv2
import torch

import folder_paths

from .compat import category, progress_bar, throw_if_interrupted


def write_mp4(frames: torch.Tensor, path: str, fps: float, on_frame=None):
    """frames: IMAGE [N, H, W, 3] in 0..1 -> an mp4 (OpenCV's mp4v codec, no external ffmpeg)."""
    n, h, w, _ = frames.shape
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    try:
        for i in range(n):
            rgb = (frames[i, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if on_frame:
                on_frame()
    finally:
        writer.release()


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
    CATEGORY = category("video")
    TITLE = "STEM Save Video (mp4)"
    DESCRIPTION = "Saves the frames as an mp4 and shows the first frame as a preview."

    def save(self, images, fps, filename_prefix):
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] < 1:
            raise ValueError("images: expected an IMAGE batch [frames, H, W, 3] with at least one frame")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        out_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, out_dir, images.shape[2], images.shape[1])
        os.makedirs(folder, exist_ok=True)
        base = f"{name}_{counter:05}"
        bar = progress_bar(images.shape[0])

        def tick():
            throw_if_interrupted()
            bar.update(1)

        write_mp4(images, os.path.join(folder, base + ".mp4"), fps, on_frame=tick)
        first = (images[0, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        cv2.imwrite(os.path.join(folder, base + ".png"), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
        return {"ui": {"images": [{"filename": base + ".png", "subfolder": subfolder, "type": "output"}],
                       "videos": [{"filename": base + ".mp4", "subfolder": subfolder, "type": "output",
                                   "format": "video/mp4", "frame_rate": float(fps), "frames": int(images.shape[0])}]}}


NODE_CLASS_MAPPINGS = {"STEMSaveVideo": STEMSaveVideo}
