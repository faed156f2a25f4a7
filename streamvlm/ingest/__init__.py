"""Ingest: video files → timed RGB frames → sampled frames → model-ready tensors.

``FileSource`` decodes (PyAV by default, decord optional) with PTS-based times and the
rotation tag applied; ``Sampler`` keeps frames for a target fps without look-ahead;
``preprocess`` resizes/normalises/patchifies for Qwen2.5-VL and LLaVA-OneVision without
torchvision.

Opening and probing a file imports no torch, so a command refuses a file that is not a
video at once; the preprocessing names (which need torch) are imported on first use.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .frames import Frame
from .sampler import Sampler, sample_frames
from .sources import FileSource
from .video_info import VideoInfo

_PREPROCESS = "streamvlm.ingest.preprocess"
_LAZY = {
    name: _PREPROCESS
    for name in (
        "QWEN_IMAGE_MAX_PIXELS",
        "QWEN_IMAGE_MIN_PIXELS",
        "QWEN_VIDEO_MAX_PIXELS",
        "QWEN_VIDEO_MIN_PIXELS",
        "LlavaOnevisionPreprocessor",
        "LlavaOnevisionSpec",
        "QwenPatchifier",
        "QwenVisionSpec",
        "patchify_qwen",
        "preprocess_llava_onevision",
        "smart_resize",
    )
}

if TYPE_CHECKING:
    from .preprocess import (
        QWEN_IMAGE_MAX_PIXELS,
        QWEN_IMAGE_MIN_PIXELS,
        QWEN_VIDEO_MAX_PIXELS,
        QWEN_VIDEO_MIN_PIXELS,
        LlavaOnevisionPreprocessor,
        LlavaOnevisionSpec,
        QwenPatchifier,
        QwenVisionSpec,
        patchify_qwen,
        preprocess_llava_onevision,
        smart_resize,
    )

__getattr__ = lazy_getattr(__name__, _LAZY, globals())

__all__ = [
    "QWEN_IMAGE_MAX_PIXELS",
    "QWEN_IMAGE_MIN_PIXELS",
    "QWEN_VIDEO_MAX_PIXELS",
    "QWEN_VIDEO_MIN_PIXELS",
    "FileSource",
    "Frame",
    "LlavaOnevisionPreprocessor",
    "LlavaOnevisionSpec",
    "QwenPatchifier",
    "QwenVisionSpec",
    "Sampler",
    "VideoInfo",
    "patchify_qwen",
    "preprocess_llava_onevision",
    "sample_frames",
    "smart_resize",
]
