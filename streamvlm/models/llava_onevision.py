"""LLaVA-OneVision backend: 1-D positions, one pooled token grid per frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..ingest.preprocess import LlavaOnevisionPreprocessor, PreparedPixels
from ..registry import BACKENDS
from .base import Backend, VisualChunk


@BACKENDS.register("llava_onevision")  # transformers model_type
class LlavaOnevisionBackend(Backend):
    """The stream is one long video; every frame is SigLIP-encoded, projected and 2x2-pooled.

    LLaVA-OneVision marks the end of a video with its learned ``image_newline`` row;
    streamvlm puts that row at the start of each question, right after the last frame
    seen, which is where the model saw it in training. Positions are 1-D and consecutive
    in arrival order: the position counter advances by the tokens each chunk adds.
    """

    family = "llava-onevision"
    position_dims = 1
    default_chunk_frames = 1

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        preprocess: LlavaOnevisionPreprocessor,
    ):
        super().__init__(model, tokenizer, name)
        self.preprocess = preprocess

    def model_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions  # [batch=1, L]

    def question_embeds(self, question_ids: Sequence[int]) -> torch.Tensor:
        newline = self.model.model.image_newline[None].to(self.dtype)
        return torch.cat([newline, self.embed_ids(question_ids)], dim=0)

    @torch.inference_mode()
    def encode_prepared(
        self,
        prepared: PreparedPixels,
        times: Sequence[float],
        *,
        video_start: int,
        next_position: int,
    ) -> VisualChunk:
        # uint8 to the device, normalised there straight into the model's dtype (a lookup of
        # float32 values cast to it: what casting the float32 pixels gave)
        pixel_values = prepared.normalised(self.device, self.dtype)
        frames = pixel_values.shape[0]
        features = self.model.model.get_video_features(pixel_values[None])
        # get_video_features appends the end-of-video newline row; a stream has not ended.
        embeds = features.pooler_output[0, :-1]
        per_frame = embeds.shape[0] // frames
        side = int(round(per_frame**0.5))
        positions = self.text_positions(next_position, embeds.shape[0])
        return VisualChunk(embeds=embeds, positions=positions, grid=(frames, side, per_frame // side))
