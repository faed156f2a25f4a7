"""Qwen2.5-VL backend: 3-D mRoPE whose time axis follows absolute stream time."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..ingest.preprocess import PreparedPixels, QwenPatchifier
from ..registry import BACKENDS
from .base import Backend, VisualChunk


@BACKENDS.register("qwen2_5_vl")  # transformers model_type
class Qwen25VLBackend(Backend):
    """The stream is one long video opened in the first user turn.

    Positions follow Qwen2.5-VL's video convention with the stream as the video: for the
    LLM token at merged grid cell (row, col) of the temporal patch whose first frame is
    at stream time ``t``::

        time   = video_start + round(t * tokens_per_second)
        height = video_start + row
        width  = video_start + col

    which is what ``get_rope_index`` gives a whole video with ``second_per_grid_ts`` equal
    to the real spacing of its temporal patches, except that ``round`` replaces the
    truncation so timestamp jitter (2.0 s decoded as 1.9999) does not shift a position.
    Text after the video starts after the largest position used so far.
    """

    family = "qwen2.5-vl"
    position_dims = 3
    video_open = "<|vision_start|>"
    video_close = "<|vision_end|>"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        preprocess: QwenPatchifier,
    ):
        super().__init__(model, tokenizer, name)
        vision = model.config.vision_config
        self.temporal_patch_size = vision.temporal_patch_size
        self.merge_size = vision.spatial_merge_size
        self.tokens_per_second = vision.tokens_per_second
        self.default_chunk_frames = self.temporal_patch_size
        self.frame_multiple = self.temporal_patch_size
        self.preprocess = preprocess

    def model_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[:, None, :]  # [3, batch=1, L]

    def contiguous_positions(self, positions: Sequence[torch.Tensor], video_start: int) -> list[torch.Tensor]:
        """Height and width rows are kept; the k-th temporal patch of the attended blocks gets
        time ``video_start + k * step``, ``step`` being the spacing of a video sampled at 1 fps
        (``tokens_per_second * temporal_patch_size``), so patches keep their order and spacing."""
        step = self.tokens_per_second * self.temporal_patch_size
        out, cursor = [], video_start
        for old in positions:
            times = torch.unique(old[0])  # this block's temporal patches, in order
            slot = torch.searchsorted(times, old[0])
            new = old.clone()
            new[0] = cursor + slot * step
            out.append(new)
            cursor += len(times) * step
        return out

    def chunk_positions(
        self, grid: tuple[int, int, int], patch_times: Sequence[float], video_start: int
    ) -> torch.Tensor:
        """Positions of an LLM token grid [3, t*h*w]; ``patch_times`` holds each temporal patch's start."""
        t, h, w = grid
        time = torch.tensor([video_start + round(s * self.tokens_per_second) for s in patch_times])
        rows = torch.arange(h) + video_start
        cols = torch.arange(w) + video_start
        tt, hh, ww = torch.meshgrid(time, rows, cols, indexing="ij")
        return torch.stack([tt, hh, ww]).reshape(3, t * h * w)

    @torch.inference_mode()
    def encode_prepared(
        self,
        prepared: PreparedPixels,
        times: Sequence[float],
        *,
        video_start: int,
        next_position: int,
    ) -> VisualChunk:
        grid_t, grid_h, grid_w = prepared.grid
        grid_thw = torch.tensor([[grid_t, grid_h, grid_w]], device=self.device)
        # uint8 to the device, normalised there: the float32 values get_video_features casts as before
        pixel_values = prepared.normalised(self.device)
        features = self.model.model.get_video_features(pixel_values, grid_thw)
        embeds = torch.cat(features.pooler_output, dim=0)
        llm_grid = (grid_t, grid_h // self.merge_size, grid_w // self.merge_size)
        patch_times = [times[i * self.temporal_patch_size] for i in range(grid_t)]
        positions = self.chunk_positions(llm_grid, patch_times, video_start)
        return VisualChunk(embeds=embeds, positions=positions, grid=llm_grid)
