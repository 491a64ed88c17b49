"""Video and frame-folder loading for the pack (pure: torch, numpy, OpenCV, PyAV; no ComfyUI import).

`load_video(path, ...)` returns a `VideoClip` whose `frames` are ComfyUI IMAGE-style float32 RGB
[N, H, W, 3] in 0..1. The options follow the meaning of VideoHelperSuite's Load Video:

- force_rate (0 = keep the source rate): resample the clip to this many frames per second by
  dropping or repeating source frames. Output frame k shows the source frame on screen at time
  k / force_rate (exact rational arithmetic, so 20 fps -> 10 fps keeps frames 0, 2, 4, ...).
- skip_first_frames, select_every_nth, frame_load_cap (0 = no cap) then select from that
  (resampled) stream in this order: drop the first `skip_first_frames`, keep every
  `select_every_nth`-th of the rest, stop after `frame_load_cap` frames. Decoding stops as soon as
  the cap is reached; frames that are not selected are skipped without colour conversion.
- custom_width / custom_height (0 = keep): the requested size. If only one is given the other
  follows the source aspect ratio.
- The final size is ALWAYS a multiple of 8 (SD latents are 1/8 of the picture):
    size_mode "resize": each side becomes the NEAREST multiple of 8 (halves round up), at least 8,
        and the frame is resized to exactly that (718 -> 720; 716 -> 720; 715 -> 712). When both
        custom sides are given the picture is stretched to them.
    size_mode "crop": each side becomes the multiple of 8 at or BELOW the requested size (718 ->
        712); the frame is scaled, aspect kept, just enough to cover that size and the excess is
        centre-cropped. Without custom sizes nothing is scaled: only the borders are cut.
- `fps` is the forced rate when force_rate > 0, else the source rate (exact where PyAV can read the
  stream's average_rate: man-skiing.mp4 gives 30000/1001). select_every_nth does not change `fps`.
- Frame folders (png/jpg/jpeg/webp/bmp, natural sort order: 2.png before 10.png) carry no timing:
  `source_fps` is None and `fps` is DEFAULT_FOLDER_FPS (8.0) or, when force_rate > 0, force_rate.
  For a folder force_rate only sets the reported rate; no frame is dropped or repeated.
- Audio (PyAV, optional): {"waveform": float32 [1, C, T], "sample_rate": int}, or None when the
  file has no audio stream, PyAV is missing, or the audio cannot be decoded. When the selection
  covers the whole clip the whole track is returned, otherwise it is trimmed to the time span of
  the selected frames.

Safety: the frame count a container declares is never used to allocate anything; frames are
counted as they decode. `max_frames` caps the number of loaded frames. Every problem with the
input raises `VideoLoadError` (a ValueError) whose message names the input and says what to do.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch

from .errors import MemoryBudgetError, STEMError, VideoLoadError
from .memory import HEADROOM, gb, video_frames_bytes

try:  # PyAV is optional: exact frame rates and audio
    import av  # type: ignore
except Exception:  # pragma: no cover - exercised only without PyAV
    av = None

__all__ = [
    "VideoLoadError", "VideoClip", "load_video", "load_audio", "target_size", "resolve_in_input_dir",
    "list_inputs", "change_signature", "write_video", "VIDEO_FORMATS", "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "DEFAULT_FOLDER_FPS",
    "DEFAULT_MAX_FRAMES", "MAX_SIDE", "SIZE_MODES",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_FOLDER_FPS = 8.0
DEFAULT_MAX_FRAMES = 10000
MAX_SIDE = 16384  # largest accepted output side in pixels
SIZE_MODES = ("resize", "crop")

OnFrame = Callable[[int, int], None]  # (source frames read so far, expected number to read)


@dataclass
class VideoClip:
    frames: torch.Tensor  # float32 [N, H, W, 3], RGB, 0..1
    fps: float
    source_fps: Optional[float]
    frame_count: int
    width: int
    height: int
    audio: Optional[dict] = None
    source_info: Dict = field(default_factory=dict)

    def describe(self) -> str:
        """One human-readable line, e.g. for a node's video_info output."""
        info = self.source_info
        src = info.get("name", "?")
        parts = [f"{src}: {self.frame_count} frames {self.width}x{self.height} @ {_fmt_fps(self.fps)} fps"]
        if info.get("kind") == "folder":
            parts.append(f"(frame folder of {info.get('source_frame_count')} images "
                         f"{info.get('source_width')}x{info.get('source_height')}, no timing)")
        else:
            declared = info.get("source_frame_count")
            parts.append(f"(source {declared if declared else '?'} frames "
                         f"{info.get('source_width')}x{info.get('source_height')} @ "
                         f"{_fmt_fps(self.source_fps)} fps)")
        if self.audio is not None:
            wf = self.audio["waveform"]
            parts.append(f"audio {wf.shape[1]} ch {self.audio['sample_rate']} Hz "
                         f"{wf.shape[-1] / self.audio['sample_rate']:.2f} s")
        else:
            parts.append("no audio")
        line = ", ".join([" ".join(parts[:2])] + parts[2:])
        if info.get("warnings"):
            line += "; warning: " + " ".join(info["warnings"])
        return line


def _fmt_fps(fps) -> str:
    if fps is None:
        return "?"
    return f"{fps:.3f}".rstrip("0").rstrip(".")


# ----------------------------------------------------------------------------- sizes

def _round8_nearest(x: float) -> int:
    return max(8, int(math.floor(x / 8.0 + 0.5)) * 8)


def _round8_down(x: float) -> int:
    return int(math.floor(x / 8.0 + 1e-9)) * 8


def target_size(src_width: int, src_height: int, custom_width: int = 0, custom_height: int = 0,
                size_mode: str = "resize") -> Tuple[int, int]:
    """Final (width, height) for a source size and the size options (see the module docstring)."""
    w, h = _plan_size(src_width, src_height, custom_width, custom_height, size_mode, "the clip")[:2]
    return w, h


def _plan_size(src_w: int, src_h: int, cw: int, ch: int, mode: str, name: str):
    """-> (final_w, final_h, scaled_w, scaled_h): scale the frame to scaled_*, then centre-crop."""
    if cw and ch:
        req_w, req_h = float(cw), float(ch)
    elif cw:
        req_w, req_h = float(cw), src_h * cw / src_w
    elif ch:
        req_w, req_h = src_w * ch / src_h, float(ch)
    else:
        req_w, req_h = float(src_w), float(src_h)
    if mode == "resize":
        fw, fh = _round8_nearest(req_w), _round8_nearest(req_h)
        return fw, fh, fw, fh
    fw, fh = _round8_down(req_w), _round8_down(req_h)
    if fw < 8 or fh < 8:
        raise VideoLoadError(
            f"{name}: size_mode 'crop' needs at least 8x8 pixels but the requested size is "
            f"{req_w:.0f}x{req_h:.0f}; use size_mode 'resize' or a larger custom_width/custom_height")
    scale = max(fw / src_w, fh / src_h)
    if cw or ch:
        sw, sh = max(fw, int(round(src_w * scale))), max(fh, int(round(src_h * scale)))
    else:
        sw, sh = src_w, src_h
    return fw, fh, sw, sh


def _fit(frame: np.ndarray, plan) -> np.ndarray:
    fw, fh, sw, sh = plan
    h, w = frame.shape[:2]
    if (w, h) != (sw, sh):
        interp = cv2.INTER_AREA if sw * sh < w * h else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (sw, sh), interpolation=interp)
    if (sw, sh) != (fw, fh):
        x0, y0 = (sw - fw) // 2, (sh - fh) // 2
        frame = frame[y0:y0 + fh, x0:x0 + fw]
    return np.ascontiguousarray(frame)


# ----------------------------------------------------------------------------- options

def _check_options(name, force_rate, custom_width, custom_height, frame_load_cap, skip_first_frames,
                   select_every_nth, size_mode, max_frames):
    def bad(opt, value, need):
        raise VideoLoadError(f"{name}: {opt}={value!r} is invalid; {need}")

    try:
        force_rate = float(force_rate)
    except (TypeError, ValueError):
        bad("force_rate", force_rate, "give a number of frames per second (0 keeps the source rate)")
    if not math.isfinite(force_rate) or force_rate < 0:
        bad("force_rate", force_rate, "use 0 to keep the source rate or a positive frames-per-second value")
    ints = {}
    for opt, value, lo, need in (
        ("custom_width", custom_width, 0, "use 0 to keep the width or a positive number of pixels"),
        ("custom_height", custom_height, 0, "use 0 to keep the height or a positive number of pixels"),
        ("frame_load_cap", frame_load_cap, 0, "use 0 to load all frames or a positive frame count"),
        ("skip_first_frames", skip_first_frames, 0, "use 0 or a positive number of frames to skip"),
        ("select_every_nth", select_every_nth, 1, "use 1 to keep every frame, 2 for every other one, ..."),
        ("max_frames", max_frames, 1, "use a positive frame count"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            if isinstance(value, float) and value.is_integer() and value >= lo:
                value = int(value)
            else:
                bad(opt, value, need)
        ints[opt] = int(value)
    for opt in ("custom_width", "custom_height"):
        if ints[opt] > MAX_SIDE:
            bad(opt, ints[opt], f"the largest supported side is {MAX_SIDE} pixels")
    if size_mode not in SIZE_MODES:
        bad("size_mode", size_mode, f"choose one of {', '.join(SIZE_MODES)}")
    return force_rate, ints


# ----------------------------------------------------------------------------- selection

class _Selection:
    """skip_first_frames -> select_every_nth -> frame_load_cap over the (resampled) output stream."""

    def __init__(self, skip: int, nth: int, cap: int, max_frames: int, name: str):
        self.skip, self.nth, self.cap, self.max_frames, self.name = skip, nth, cap, max_frames, name
        self.count = 0
        self.first_index: Optional[int] = None
        self.last_index: Optional[int] = None

    def wants(self, out_index: int) -> bool:
        return out_index >= self.skip and (out_index - self.skip) % self.nth == 0 and not self.full

    @property
    def full(self) -> bool:
        return bool(self.cap) and self.count >= self.cap

    def take(self, out_index: int):
        if self.count >= self.max_frames:
            raise VideoLoadError(
                f"{self.name}: the selection has more than max_frames={self.max_frames} frames; set "
                f"frame_load_cap (or raise select_every_nth / skip_first_frames) to load fewer")
        self.count += 1
        if self.first_index is None:
            self.first_index = out_index
        self.last_index = out_index

    def needed_outputs(self) -> Optional[int]:
        """Output frames that must exist to reach the cap, None without a cap."""
        if not self.cap:
            return None
        return self.skip + (self.cap - 1) * self.nth + 1


class _Frames:
    """Collects fitted uint8 RGB frames, then builds the float tensor one frame at a time.

    ``available`` (bytes of free memory, or None) bounds what the frames may take: once the first frame fixes the
    size, the frames ``expected`` to be selected are checked before any more is decoded, and the running count
    afterwards (for files that do not say how many frames they hold)."""

    def __init__(self, name: str, custom_width: int, custom_height: int, mode: str, strict_size: bool,
                 available: Optional[int] = None, expected: Optional[int] = None):
        self.name, self.cw, self.ch = name, custom_width, custom_height
        self.mode, self.strict = mode, strict_size
        self.items: List[np.ndarray] = []
        self.plan = None
        self.src_size = None
        self.available, self.expected = available, expected

    def _check_memory(self, frames: int):
        if self.available is None:
            return
        fw, fh = self.plan[0], self.plan[1]
        needed = video_frames_bytes(frames, fw, fh)
        limit = int(self.available * HEADROOM)
        if needed <= limit:
            return
        per_frame = video_frames_bytes(1, fw, fh)
        fits = max(0, limit // per_frame)
        scale = math.sqrt(limit / needed)
        width = max(8, int(fw * scale) // 8 * 8)
        raise MemoryBudgetError(
            f"{self.name}: {frames} frames of {fw}x{fh} need {gb(needed)} as float32 frames (and their decoded "
            f"copies), {gb(self.available)} free ({gb(limit)} usable): set frame_load_cap <= {fits} or "
            f"custom_width {width} (or select_every_nth / force_rate to take fewer frames)")

    def add(self, rgb: np.ndarray, label: str, copies: int = 1):
        h, w = rgb.shape[:2]
        if self.plan is None:
            self.src_size = (w, h)
            self.plan = _plan_size(w, h, self.cw, self.ch, self.mode, self.name)
            if self.expected:
                self._check_memory(self.expected)
        elif (w, h) != self.src_size and self.strict:
            raise VideoLoadError(
                f"{self.name}: {label} is {w}x{h} but the first frame is {self.src_size[0]}x"
                f"{self.src_size[1]}; all images of a frame folder must have the same size")
        self._check_memory(len(self.items) + copies)
        fitted = _fit(rgb, self.plan)
        for _ in range(copies):
            self.items.append(fitted)

    def tensor(self) -> torch.Tensor:
        n = len(self.items)
        fw, fh = self.plan[0], self.plan[1]
        out = torch.empty((n, fh, fw, 3), dtype=torch.float32)
        for i in range(n):
            out[i].copy_(torch.from_numpy(self.items[i]))  # uint8 -> float32 without a temporary
            self.items[i] = None  # free as we go (duplicates share memory anyway)
        self.items = []
        return out.mul_(1.0 / 255.0)


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img / 257.0 + 0.5).astype(np.uint8)
        else:
            img = np.clip(img.astype(np.float64) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- probing

def _probe(path: str) -> dict:
    """Stream facts from PyAV (exact frame rate, declared frame count, codec, audio). {} on failure.
    Declared values are only used for messages and progress, never for allocation."""
    if av is None:
        return {}
    try:
        with av.open(path) as container:
            info: dict = {"has_audio": bool(container.streams.audio)}
            if container.streams.video:
                vs = container.streams.video[0]
                rate = vs.average_rate or vs.guessed_rate or getattr(vs, "base_rate", None)
                if rate:
                    info["fps_fraction"] = Fraction(rate.numerator, rate.denominator)
                info["declared_frames"] = int(vs.frames or 0)
                info["codec"] = vs.codec_context.name
                if vs.duration is not None and vs.time_base is not None:
                    info["duration"] = float(vs.duration * vs.time_base)
                elif container.duration:
                    info["duration"] = container.duration / 1_000_000
            return info
    except Exception as exc:  # PyAV's opinion is advisory; OpenCV decides what decodes
        # FFmpeg's reason only: str(exc) also holds the server-side path, which the user must not see
        reason = getattr(exc, "strerror", None) or str(exc).replace(path, os.path.basename(path))
        return {"probe_error": str(reason).splitlines()[0][:200]}


# ----------------------------------------------------------------------------- audio

def load_audio(path: Union[str, os.PathLike], start: float = 0.0, end: Optional[float] = None,
               warn_list: Optional[list] = None) -> Optional[dict]:
    """First audio stream as {"waveform": float32 [1, C, T], "sample_rate": int}, or None.
    `start`/`end` in seconds trim the track (end None = to the end)."""
    if av is None:
        return None
    path = str(path)
    chunks: List[np.ndarray] = []
    rate = 0
    try:
        container = av.open(path)
    except Exception:
        return None
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        if rate <= 0:
            return None
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().astype(np.float32, copy=False))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().astype(np.float32, copy=False))
        except Exception as exc:  # truncated/corrupt audio: keep what decoded
            msg = f"audio decoding stopped early ({str(exc).splitlines()[0][:120]})"
            if warn_list is not None:
                warn_list.append(msg)
            warnings.warn(f"{os.path.basename(path)}: {msg}", RuntimeWarning, stacklevel=2)
    except Exception:
        return None
    finally:
        container.close()
    if not chunks:
        return None
    channels = chunks[0].shape[0]
    chunks = [c for c in chunks if c.ndim == 2 and c.shape[0] == channels]
    wave = np.concatenate(chunks, axis=1)
    s0 = max(0, int(round(start * rate)))
    s1 = wave.shape[1] if end is None else min(wave.shape[1], int(round(end * rate)))
    wave = wave[:, s0:max(s0, s1)]
    if wave.shape[1] == 0:
        return None
    wave = np.nan_to_num(wave, nan=0.0, posinf=1.0, neginf=-1.0)
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wave)).unsqueeze(0), "sample_rate": rate}


# ----------------------------------------------------------------------------- loading

def load_video(path: Union[str, os.PathLike], *, force_rate: float = 0.0, custom_width: int = 0,
               custom_height: int = 0, frame_load_cap: int = 0, skip_first_frames: int = 0,
               select_every_nth: int = 1, size_mode: str = "resize", max_frames: int = DEFAULT_MAX_FRAMES,
               on_frame: Optional[OnFrame] = None, load_audio_track: bool = True,
               name: Optional[str] = None, available_bytes: Optional[int] = None) -> VideoClip:
    """Load a video file or a folder of images (see the module docstring for every option).

    on_frame(done, expected) is called after each source frame is read (for progress and
    cancellation; it may raise to abort). `name` is how messages refer to the input (default: the
    path). ``available_bytes`` (free memory): a selection whose frames would not fit is refused with
    MemoryBudgetError as soon as the first frame gives the size, before the rest is decoded."""
    path = Path(path)
    name = f"'{name if name is not None else str(path)}'"
    force_rate, o = _check_options(name, force_rate, custom_width, custom_height, frame_load_cap,
                                   skip_first_frames, select_every_nth, size_mode, max_frames)
    if not path.exists():
        raise VideoLoadError(f"video {name} not found; check the name or put the file in the input folder")
    sel = _Selection(o["skip_first_frames"], o["select_every_nth"], o["frame_load_cap"], o["max_frames"], name)
    if path.is_dir():
        return _load_folder(path, name, force_rate, o, size_mode, sel, on_frame, available_bytes)
    return _load_file(path, name, force_rate, o, size_mode, sel, on_frame, load_audio_track, available_bytes)


def _zero_selected(name: str, total_out: int, o: dict, what: str) -> VideoLoadError:
    return VideoLoadError(
        f"no frames selected from {name}: it has {total_out} {what}, and skip_first_frames="
        f"{o['skip_first_frames']}, select_every_nth={o['select_every_nth']}, frame_load_cap="
        f"{o['frame_load_cap']} leave none; lower skip_first_frames below {total_out}")


def _load_file(path: Path, name: str, force_rate: float, o: dict, size_mode: str, sel: _Selection,
               on_frame: Optional[OnFrame], want_audio: bool, available: Optional[int] = None) -> VideoClip:
    if not path.is_file():
        raise VideoLoadError(f"{name} is not a regular file or folder; pick a video file or a frame folder")
    if path.stat().st_size == 0:
        raise VideoLoadError(f"video {name} is an empty file (0 bytes); re-upload or re-export the video")
    probe = _probe(str(path))
    warn_list: List[str] = []

    backend = cv2.CAP_FFMPEG if "FFMPEG" in _video_backends() else cv2.CAP_ANY
    cap = cv2.VideoCapture(str(path), backend)
    try:
        if not cap.isOpened():
            detail = f" ({probe['probe_error']})" if probe.get("probe_error") else ""
            raise VideoLoadError(
                f"could not decode {name}: is it a video?{detail} The file may be damaged, truncated "
                f"or not a video; re-export it (e.g. as H.264 .mp4) or pick another file")
        if "fps_fraction" in probe:
            fps_frac = probe["fps_fraction"]
        else:
            cv_fps = cap.get(cv2.CAP_PROP_FPS)
            fps_frac = Fraction(cv_fps).limit_denominator(1001) if cv_fps and math.isfinite(cv_fps) and cv_fps > 0 else None
        if fps_frac is None or fps_frac <= 0:
            fps_frac = Fraction(DEFAULT_FOLDER_FPS)
            warn_list.append(f"the file declares no frame rate; assumed {DEFAULT_FOLDER_FPS} fps")
        declared = probe.get("declared_frames") or 0
        if not declared:
            cv_count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            declared = int(cv_count) if cv_count and math.isfinite(cv_count) and cv_count > 0 else 0

        # output frames per source frame: exact rational, 1 without force_rate
        ratio = Fraction(force_rate).limit_denominator(1_000_000) / fps_frac if force_rate > 0 else Fraction(1)
        needed = sel.needed_outputs()
        expected = declared
        if needed is not None:
            need_src = math.ceil(needed / ratio)
            expected = min(declared, need_src) if declared else need_src

        # frames the selection will take, when the container's count is plausible (a header can lie: a few bytes
        # per frame is not a video), so a clip that cannot fit is refused after its first frame
        plausible = declared and path.stat().st_size / declared >= 16
        selected = None
        if plausible:
            outputs = int(math.floor(expected * ratio)) if force_rate > 0 else expected
            selected = max(0, -(-(outputs - o["skip_first_frames"]) // o["select_every_nth"]))
            if o["frame_load_cap"]:
                selected = min(selected, o["frame_load_cap"])
        frames = _Frames(name, o["custom_width"], o["custom_height"], size_mode, strict_size=False,
                         available=available, expected=selected)
        read = 0
        out_total = 0
        while not sel.full:
            if not cap.grab():
                break
            i = read
            read += 1
            if force_rate > 0:
                first, last = math.ceil(i * ratio), math.ceil((i + 1) * ratio)
            else:
                first, last = i, i + 1
            out_total = last
            wanted = [k for k in range(first, last) if sel.wants(k)]
            if wanted:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    warn_list.append(f"frame {i} could not be decoded; stopped there")
                    break
                rgb = _to_rgb(bgr)
                n_new = 0
                for k in wanted:
                    if sel.full:
                        break
                    sel.take(k)
                    n_new += 1
                frames.add(rgb, f"frame {i}", copies=n_new)
            if on_frame is not None:
                on_frame(read, max(expected, read))
        stopped_by_cap = sel.full
    finally:
        cap.release()

    if read == 0:
        raise VideoLoadError(
            f"could not decode any frame from {name}: is it a video? The file may be damaged or truncated; "
            f"re-export it (e.g. as H.264 .mp4) or pick another file")
    if not stopped_by_cap and declared and read < declared:
        warn_list.append(f"decoded {read} of the {declared} frames the file declares (truncated or damaged file?)")
    if sel.count == 0:
        what = "frames" if force_rate <= 0 else f"frames at force_rate {force_rate:g} ({read} source frames)"
        raise _zero_selected(name, out_total, o, what)
    for msg in warn_list:
        warnings.warn(f"{name}: {msg}", RuntimeWarning, stacklevel=3)

    source_fps = float(fps_frac)
    fps = float(force_rate) if force_rate > 0 else source_fps
    audio = None
    if want_audio and probe.get("has_audio", True):
        whole = sel.first_index == 0 and not stopped_by_cap and o["select_every_nth"] == 1
        if whole:
            audio = load_audio(path, warn_list=warn_list)
        else:
            audio = load_audio(path, start=sel.first_index / fps, end=(sel.last_index + 1) / fps,
                               warn_list=warn_list)
    tensor = frames.tensor()
    info = {
        "name": name.strip("'"), "kind": "video", "path": str(path), "codec": probe.get("codec"),
        "source_fps": source_fps, "source_fps_fraction": f"{fps_frac.numerator}/{fps_frac.denominator}",
        "source_frame_count": declared or None, "decoded_source_frames": read,
        "source_width": frames.src_size[0], "source_height": frames.src_size[1],
        "duration": probe.get("duration"), "fps": fps, "frame_count": int(tensor.shape[0]),
        "width": int(tensor.shape[2]), "height": int(tensor.shape[1]), "has_audio": audio is not None,
        "first_frame_index": sel.first_index, "warnings": warn_list,
    }
    return VideoClip(frames=tensor, fps=fps, source_fps=source_fps, frame_count=int(tensor.shape[0]),
                     width=int(tensor.shape[2]), height=int(tensor.shape[1]), audio=audio, source_info=info)


def _video_backends() -> List[str]:
    try:
        from cv2 import videoio_registry
        return [videoio_registry.getBackendName(b) for b in videoio_registry.getBackends()]
    except Exception:  # pragma: no cover
        return ["FFMPEG"]


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _folder_images(folder: Path) -> List[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise VideoLoadError(f"cannot read the frame folder '{folder}': {exc.strerror}") from None
    files = [Path(e.path) for e in entries
             if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_image(p: Path, name: str) -> np.ndarray:
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise VideoLoadError(f"{name}: cannot read image '{p.name}': {exc.strerror}") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise VideoLoadError(f"{name}: could not decode image '{p.name}'; is it a valid "
                             f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} image? Remove or replace it")
    return img


def _load_folder(folder: Path, name: str, force_rate: float, o: dict, size_mode: str, sel: _Selection,
                 on_frame: Optional[OnFrame], available: Optional[int] = None) -> VideoClip:
    images = _folder_images(folder)
    if not images:
        raise VideoLoadError(
            f"frame folder {name} contains no images ({', '.join(IMAGE_EXTENSIONS)}); put the frames "
            f"there as 00000.png, 00001.png, ... or pick a video file")
    needed = sel.needed_outputs()
    expected = len(images) if needed is None else min(len(images), needed)
    selected = max(0, -(-(len(images) - o["skip_first_frames"]) // o["select_every_nth"]))
    if o["frame_load_cap"]:
        selected = min(selected, o["frame_load_cap"])
    frames = _Frames(name, o["custom_width"], o["custom_height"], size_mode, strict_size=True,
                     available=available, expected=selected)
    read = 0
    for i, p in enumerate(images):
        if sel.full:
            break
        read += 1
        if sel.wants(i):
            sel.take(i)
            frames.add(_to_rgb(_read_image(p, name)), f"image '{p.name}'")
        if on_frame is not None:
            on_frame(read, expected)
    if sel.count == 0:
        raise _zero_selected(name, len(images), o, "images")
    fps = float(force_rate) if force_rate > 0 else DEFAULT_FOLDER_FPS
    tensor = frames.tensor()
    info = {
        "name": name.strip("'"), "kind": "folder", "path": str(folder), "source_fps": None,
        "source_frame_count": len(images), "decoded_source_frames": read,
        "source_width": frames.src_size[0], "source_height": frames.src_size[1], "fps": fps,
        "frame_count": int(tensor.shape[0]), "width": int(tensor.shape[2]), "height": int(tensor.shape[1]),
        "has_audio": False, "first_frame_index": sel.first_index, "warnings": [],
        "files": [p.name for p in images[:3]],
    }
    return VideoClip(frames=tensor, fps=fps, source_fps=None, frame_count=int(tensor.shape[0]),
                     width=int(tensor.shape[2]), height=int(tensor.shape[1]), audio=None, source_info=info)


# ----------------------------------------------------------------------------- input folder

def resolve_in_input_dir(name: str, input_dir: Union[str, os.PathLike]) -> Path:
    """The real path of `name` inside `input_dir`. Refuses empty names, absolute paths, `..`
    traversal and symlinks whose target leaves the folder (also links among a frame folder's images).
    Does not check that the file exists."""
    root = os.path.realpath(str(input_dir))
    if not isinstance(name, str) or not name.strip():
        raise VideoLoadError(f"no video selected; put a video file or a frame folder in {root} and pick it")
    clean = name.strip()
    if clean.endswith(" [input]"):  # ComfyUI's annotated form of an input-folder name
        clean = clean[: -len(" [input]")].rstrip()
    outside = VideoLoadError(
        f"video '{name}' is outside ComfyUI's input folder; put the file in {root} and select it by name")
    if os.path.isabs(clean) or (os.name == "nt" and re.match(r"^[A-Za-z]:", clean)) or "\x00" in clean:
        raise outside
    candidate = os.path.realpath(os.path.join(root, clean))
    try:
        inside = os.path.commonpath([root, candidate]) == root
    except ValueError:  # different drives
        inside = False
    if not inside:
        raise outside
    if os.path.isdir(candidate):  # a frame folder: none of its images may be a link leading outside
        for image in _folder_images(Path(candidate)):
            real = os.path.realpath(str(image))
            try:
                image_inside = os.path.commonpath([root, real]) == root
            except ValueError:
                image_inside = False
            if not image_inside:
                raise VideoLoadError(
                    f"frame folder '{name}' contains '{image.name}', a link to a file outside ComfyUI's input "
                    f"folder; copy the frame itself into the folder instead of linking it")
    return Path(candidate)


def _folder_has_images(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
                       for e in it)
    except OSError:
        return False


def list_inputs(input_dir: Union[str, os.PathLike]) -> List[str]:
    """Video files and image sub-folders directly inside `input_dir`, as sorted relative names."""
    root = str(input_dir)
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    names = []
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_file() and e.name.lower().endswith(VIDEO_EXTENSIONS):
                names.append(e.name)
            elif e.is_dir() and _folder_has_images(e.path):
                names.append(e.name)
        except OSError:
            continue
    return sorted(names)


def change_signature(path: Union[str, os.PathLike]) -> str:
    """What tells a changed input apart without reading it, as core LoadImage's and VideoHelperSuite's IS_CHANGED
    do: a file's modification time (ns) and size; for a frame folder the name, modification time and size of every
    image. Replacing or editing a file changes it; re-queueing leaves it equal. Costs one stat() per file."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in _folder_images(path):
            st = p.stat()
            h.update(f"{p.name}\0{st.st_mtime_ns}\0{st.st_size}\0".encode("utf-8", "surrogateescape"))
        return "folder:" + h.hexdigest()
    if path.is_file():
        st = path.stat()
        return f"file:{st.st_mtime_ns}:{st.st_size}"
    raise VideoLoadError(f"video '{path.name}' not found; cannot check whether it changed")


# ----------------------------------------------------------------------------- writing

VIDEO_FORMATS = ("mp4", "webp", "gif")


def _frames_uint8(frames) -> np.ndarray:
    """IMAGE [N, H, W, 3+] float 0..1 (torch or numpy) or uint8 -> uint8 RGB [N, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.dtype != torch.uint8:
            frames = (frames[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8)
        return np.ascontiguousarray(frames[..., :3].numpy())
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames[..., :3].astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(frames[..., :3])


def write_video(frames, path: Union[str, os.PathLike], fps: float, *, format: str = "mp4", crf: int = 19,
                audio: Optional[dict] = None, metadata: Optional[Dict[str, str]] = None,
                faststart: bool = True, on_frame: Optional[Callable[[], None]] = None) -> str:
    """Write IMAGE frames [N, H, W, 3] (0..1 floats or uint8) as a video the browser plays. The pack's one writer.

    format "mp4": H.264 (libx264, yuv420p, ``crf`` 0-51, odd sides padded by one edge pixel) with the optional
    AUDIO ({"waveform" [B, C, S] or [C, S], "sample_rate"}; first batch item, at most 2 channels) as AAC trimmed
    to the frames' duration N / fps, and ``metadata`` ({"prompt": json, "workflow": json, ...}) as mp4 metadata
    keys (``movflags use_metadata_tags``, as core ComfyUI's Save Video writes them; current frontends load a
    dropped mp4's workflow from the keys ``prompt`` / ``workflow``). ``faststart`` puts the index first, so a
    browser starts playing before the whole file has arrived. "webp" / "gif": animated images (Pillow), looping,
    no sound; ``metadata`` goes into the WEBP's EXIF as ComfyUI's SaveAnimatedWEBP stores it ("prompt:{json}" in
    0x0110 Model, every other key as "key:{json}" from 0x010F Make down), which both frontends read back.
    on_frame() is called after each encoded frame (progress / Cancel). Returns the path.
    Bad arguments raise STEMError naming the argument (format, fps, crf, audio, images).
    """
    if format not in VIDEO_FORMATS:
        raise STEMError(f"must be one of {', '.join(VIDEO_FORMATS)}, got {format!r}", input_name="format")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise STEMError(f"must be a number of frames per second > 0, got {fps!r}", input_name="fps",
                        fix="connect STEM Load Video's fps or type the clip's rate")
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= int(crf) <= 51:
        raise STEMError(f"must be a whole number from 0 to 51, got {crf!r}", input_name="crf",
                        fix="0 is lossless, 17-23 look clean (19 is the default), higher is smaller and blurrier")
    rgb = _frames_uint8(frames)
    if rgb.ndim != 4 or rgb.shape[0] < 1 or rgb.shape[-1] != 3:
        raise STEMError(f"expected an IMAGE batch [frames, height, width, 3] with at least one frame, got shape "
                        f"{tuple(rgb.shape)}", input_name="images")
    wave = None
    if audio is not None and format == "mp4":
        wave = _audio_for_aac(audio, rgb.shape[0] / float(_rate(fps)))
    path = str(path)
    if format == "mp4":
        _write_mp4(rgb, path, fps, int(crf), wave, metadata or {}, faststart, on_frame)
    else:
        _write_animation(rgb, path, fps, format, metadata or {}, on_frame)
    return path


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(100000)


# sample rates FFmpeg's AAC encoder accepts
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def _audio_for_aac(audio, seconds: float):
    """AUDIO {"waveform": [B, C, S] (or [C, S]), "sample_rate": int} -> (float32 [C<=2, S'] trimmed to ``seconds``,
    rate), or None when no sample is left. The first batch item and at most two channels are kept; a rate AAC
    cannot take (e.g. 37 kHz) is resampled linearly to 48 kHz. Anything else raises STEMError (input "audio")."""
    fix = "connect the audio output of STEM Load Video (or any ComfyUI AUDIO), or leave audio unconnected"
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        got = type(audio).__name__ + (f" with keys {sorted(audio)}" if isinstance(audio, dict) else "")
        raise STEMError(f"expected ComfyUI AUDIO {{'waveform': [batch, channels, samples], 'sample_rate': int}}, "
                        f"got {got}", input_name="audio", fix=fix)
    wave = audio["waveform"]
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().float().numpy()
    else:
        try:
            wave = np.asarray(wave, dtype=np.float32)
        except (TypeError, ValueError):
            raise STEMError(f"waveform must be a tensor, got {type(wave).__name__}", input_name="audio", fix=fix)
    if wave.ndim == 3:
        wave = wave[0]
    rate = audio["sample_rate"]
    if wave.ndim != 2 or wave.shape[0] < 1:
        raise STEMError(f"waveform must be [batch, channels, samples], got shape {tuple(wave.shape)}",
                        input_name="audio", fix=fix)
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise STEMError(f"sample_rate must be a positive whole number of Hz, got {rate!r}", input_name="audio",
                        fix=fix)
    rate = int(rate)
    wave = wave[:2, : max(0, int(round(seconds * rate)))]
    if wave.shape[1] == 0:
        return None
    if rate not in AAC_RATES:
        target = 48000
        t_out = np.arange(int(round(wave.shape[1] * target / rate))) * (rate / target)
        wave = np.stack([np.interp(t_out, np.arange(wave.shape[1]), ch) for ch in wave])
        rate = target
    return np.ascontiguousarray(np.clip(np.nan_to_num(wave), -1.0, 1.0), dtype=np.float32), rate


def _write_mp4(rgb, path, fps, crf, wave, metadata, faststart, on_frame):
    if av is None:
        raise STEMError("writing mp4 needs PyAV", input_name="format", fix="pip install av, or choose webp / gif")
    n, h, w, _ = rgb.shape
    pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sides
    # use_metadata_tags: arbitrary keys (prompt, workflow) as mdta entries instead of dropping them
    flags = "use_metadata_tags" + ("+faststart" if faststart else "")
    with av.open(path, mode="w", format="mp4", options={"movflags": flags}) as container:
        for key, value in metadata.items():
            container.metadata[key] = str(value)
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height, stream.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
        stream.options = {"crf": str(int(crf))}
        audio_stream = None
        if wave is not None:
            samples, sample_rate = wave
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "stereo" if samples.shape[0] > 1 else "mono"
        for frame in rgb:
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            if on_frame:
                on_frame()
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                block = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                                   format="fltp", layout=audio_stream.layout.name)
                block.sample_rate = sample_rate
                block.pts = start
                for packet in audio_stream.encode(block):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)


def _write_animation(rgb, path, fps, format, metadata, on_frame):
    from PIL import Image

    images = []
    for frame in rgb:
        images.append(Image.fromarray(frame))
        if on_frame:
            on_frame()
    duration = max(1, int(round(1000.0 / fps)))
    kwargs = {"save_all": True, "append_images": images[1:], "duration": duration, "loop": 0}
    if format == "webp":
        exif = Image.Exif()
        tag = 0x010F
        for key, value in metadata.items():
            # ComfyUI's SaveAnimatedWEBP: 0x0110 (Model) "prompt:{json}", then 0x010F (Make) "workflow:{json}", ...
            if key == "prompt":
                exif[0x0110] = f"{key}:{value}"
            else:
                exif[tag] = f"{key}:{value}"
                tag -= 1
        images[0].save(path, format="WEBP", lossless=False, quality=90, exif=exif, **kwargs)
    else:
        images[0].save(path, format="GIF", optimize=False, **kwargs)
