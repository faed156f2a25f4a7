"""Ingest: video files → timed RGB frames → sampled frames → model-ready tensors.

``FileSource`` decodes (PyAV by default, decord optional) with PTS-based times and the
rotation tag applied; ``Sampler`` keeps frames for a target fps without look-ahead;
``preprocess`` resizes/normalises/patchifies for Qwen2.5-VL and LLaVA-OneVision without
torchvision.
"""

from .frames import Frame
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
from .sampler import Sampler, sample_frames
from .sources import FileSource
from .video_info import VideoInfo

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
