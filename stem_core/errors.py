"""The pack's one error type: a problem the user can fix.

A ``STEMError`` message names the input (or setting) at fault, gives the figures involved and says what
to do. The node glue shows it unchanged, so it is what the user reads in ComfyUI; everything else that
escapes a node is a bug. Two subclasses exist because callers handle them apart: video input problems
(refused already when a prompt is queued) and memory preflights (raised before anything is allocated).
"""
from __future__ import annotations


class STEMError(ValueError):
    """A bad input or setting. ``input_name`` and ``fix`` are kept for callers that format their own text;
    str() is the whole message."""

    def __init__(self, message: str, *, input_name: str | None = None, fix: str | None = None):
        text = message
        if input_name and not text.startswith(f"{input_name}:"):
            text = f"{input_name}: {text}"
        if fix:
            text = f"{text.rstrip('. ')}; {fix}"
        super().__init__(text)
        self.input_name = input_name
        self.fix = fix


class VideoLoadError(STEMError):
    """Bad input to the video loader (missing, outside the input folder, undecodable, empty selection)."""


class MemoryBudgetError(STEMError):
    """A preflight found that an allocation would not fit; the message gives the estimate, the limit and
    the settings that fit."""
