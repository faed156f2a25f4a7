"""The small interface between the runtime and one model family.

A backend knows its model's prompt format, how frames become visual embeddings and
which position ids every token gets. It keeps no per-stream state: positions and KV are
passed in by the runtime (invariant 1 of docs/architecture.md), so one backend serves many sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import Cache, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ..config import MemoryConfig
from ..ingest.preprocess import PreparedPixels
from . import hf_compat

# One layer's KV as the runtime keeps it: keys (after RoPE) and values, each
# [kv_heads, tokens, head_dim].
LayerKV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class VisualChunk:
    """The visual tokens of one chunk of frames, ready for the LLM prefill."""

    embeds: torch.Tensor  # [tokens, hidden]
    positions: torch.Tensor  # [position_dims, tokens], long
    grid: tuple[int, int, int]  # (time, height, width) of the LLM token grid


@dataclass(frozen=True)
class PromptParts:
    """Token ids of the text around the video, in the model's chat format.

    ``sink`` runs from the start of the conversation up to where the video starts;
    ``question`` is built per question and runs from the end of the video up to where
    the assistant's answer starts.
    """

    sink: list[int]
    question: list[int]


class FramePreparer(Protocol):
    """A family's image work on a chunk's frames (``ingest.preprocess``)."""

    def prepare(self, frames: Sequence[np.ndarray]) -> PreparedPixels: ...


class Backend(ABC):
    """One model family. Subclasses fill in prompts, vision and positions."""

    family: str
    #: rows of a position id tensor: 3 for mRoPE (time, height, width), 1 for 1-D RoPE
    position_dims: int
    #: frames per block when MemoryConfig.chunk_frames is None
    default_chunk_frames: int
    #: a chunk's frame count must be a multiple of this
    frame_multiple: int = 1
    #: the family's image work (resize, patchify), set by each subclass
    preprocess: FramePreparer

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        text_config = model.config.get_text_config()
        self.num_layers = text_config.num_hidden_layers
        self.num_kv_heads = text_config.num_key_value_heads
        self.head_dim = getattr(text_config, "head_dim", None) or (
            text_config.hidden_size // text_config.num_attention_heads
        )
        #: positions the language model was trained on (RoPE range): no forward may reach it
        self.max_positions = int(text_config.max_position_embeddings)
        #: MemoryConfig values the checkpoint recommends (models/recommended.py); set by the loader
        self.memory_defaults: dict = {}

    # ----- properties of the loaded model -----------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of one token's keys and values over every layer, at the model's dtype."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the end-of-turn marker and the tokenizer's eos."""
        ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id}
        ids.discard(None)
        ids.discard(self.tokenizer.unk_token_id)
        return sorted(ids)

    def default_memory(self, **options) -> MemoryConfig:
        """``MemoryConfig(**options)`` over the checkpoint's recommended values: what a
        session of this model uses for every option its user did not give."""
        return MemoryConfig(**{**self.memory_defaults, **options})

    # ----- prompts ---------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_parts(self, system_prompt: str, question: str = "") -> PromptParts:
        """Qwen2-style chat turns around the video; the video opens the user turn."""
        sink = f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n{self.video_open}"
        tail = f"{self.video_close}{question}<|im_end|>\n<|im_start|>assistant\n"
        return PromptParts(sink=self._ids(sink), question=self._ids(tail))

    #: text placed right before / right after the video tokens
    video_open: str = ""
    video_close: str = ""

    def question_embeds(self, question_ids: Sequence[int]) -> torch.Tensor:
        """Embeddings of the question part; families may prepend a learned end-of-video row."""
        return self.embed_ids(question_ids)

    # ----- positions -------------------------------------------------------------

    def text_positions(
        self, start: int, count: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Positions of ``count`` text tokens from ``start``: [position_dims, count], on ``device``
        (default the host; the decode loop builds its answer's on the model's device once)."""
        row = torch.arange(start, start + count, dtype=torch.long, device=device)
        return row.expand(self.position_dims, count).clone()

    def contiguous_positions(self, positions: Sequence[torch.Tensor], video_start: int) -> list[torch.Tensor]:
        """ReKV's ``contiguous`` layout: blocks attended together, laid out one after another.

        ``positions`` are the encoded positions of each block, in time order; the result
        gives each block new positions of the same shape from ``video_start`` on, with no
        gap between blocks and the order within each block kept. With 1-D positions each
        block takes the next ``tokens`` positions; families with a time axis override this.
        """
        out, cursor = [], video_start
        for old in positions:
            out.append(self.text_positions(cursor, old.shape[1]))
            cursor += old.shape[1]
        return out

    def reposition_keys(
        self, layers: Sequence[LayerKV], old: torch.Tensor, new: torch.Tensor
    ) -> tuple[LayerKV, ...]:
        """``layers`` with their keys re-rotated from positions ``old`` to ``new``.

        Keys are cached after RoPE, so moving them is an inverse rotation at the encoded
        positions and a rotation at the new ones; values carry no position.
        """
        cos_old, sin_old = self.rotary(old)
        cos_new, sin_new = self.rotary(new)
        return tuple(
            (rotate(rotate(k, cos_old, sin_old, inverse=True), cos_new, sin_new).to(k.dtype), v)
            for k, v in layers
        )

    # ----- vision ----------------------------------------------------------------

    def prepare_frames(self, frames: Sequence[np.ndarray]) -> PreparedPixels:
        """A chunk's image work (resize, patchify; still uint8) by ``preprocess``: it needs
        neither the model nor the device, so a session does it before taking the device lock."""
        return self.preprocess.prepare(frames)

    @abstractmethod
    def encode_prepared(
        self,
        prepared: PreparedPixels,
        times: Sequence[float],
        *,
        video_start: int,
        next_position: int,
    ) -> VisualChunk:
        """``encode_frames`` of frames ``prepare_frames`` already made: the device work only."""

    def encode_frames(
        self,
        frames: Sequence[np.ndarray],
        times: Sequence[float],
        *,
        video_start: int,
        next_position: int,
    ) -> VisualChunk:
        """Turn a chunk of RGB frames into visual embeddings with their positions.

        ``times`` are stream seconds relative to the first frame of the stream;
        ``video_start`` is the position where the stream's video began (right after the
        sink) and ``next_position`` the first position not used yet.
        """
        prepared = self.prepare_frames(frames)
        return self.encode_prepared(prepared, times, video_start=video_start, next_position=next_position)

    # ----- the language model ----------------------------------------------------

    def embed_ids(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Input embeddings [len(ids), hidden] of token ``ids``: a list, or a long tensor, which
        is used where it lies when on the model's device (a sampled token, with no host round trip)."""
        table = self.model.get_input_embeddings()
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor(list(ids), dtype=torch.long)
        return table(ids.to(self.device))

    @abstractmethod
    def model_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Our [position_dims, L] positions in the layout the language model takes."""

    @torch.inference_mode()
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prefill ``embeds`` [L, hidden] at ``positions`` against ``cache``; return hidden states [L, hidden].

        The new tokens' KV is appended to ``cache``. With ``attention_mask`` None every
        cached slot is visible and the new tokens are causal among themselves.
        """
        hidden = hf_compat.prefill(
            self.language_model,
            embeds[None].to(self.dtype),
            self.model_position_ids(positions.to(self.device)),
            cache,
            attention_mask,
        )
        return hidden[0]

    @torch.inference_mode()
    def query_states(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> list[torch.Tensor]:
        """Prefill ``embeds`` and return each layer's pre-RoPE queries, ``[heads, L, head_dim]``
        float32. Captured from ``q_proj``, whose output is the query before rotation."""
        captured: list[torch.Tensor] = [None] * self.num_layers
        heads = self.model.config.get_text_config().num_attention_heads

        def save(index: int, output: torch.Tensor) -> None:
            captured[index] = output[0].float().view(output.shape[1], heads, self.head_dim).transpose(0, 1)

        with hf_compat.projection_outputs(self.language_model, "q_proj", save):
            self.forward(embeds, positions, cache)
        return captured

    def question_queries(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """Prefill ``embeds`` and return each layer's mean pre-RoPE query per KV head: [layers, kv_heads * head_dim].

        Query heads are averaged within their GQA group, so the vectors live in the same
        space as the (de-rotated) keys of that KV head.
        """
        return torch.stack(
            [
                q.view(self.num_kv_heads, -1, *q.shape[1:]).mean(dim=(1, 2)).flatten()
                for q in self.query_states(embeds, positions, cache)
            ]
        )

    # ----- rotary position embedding -------------------------------------------

    @torch.inference_mode()
    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own (cos, sin) for ``positions`` [position_dims, T]: each [T, head_dim], float32."""
        return hf_compat.rotary_cos_sin(
            self.language_model, self.model_position_ids(positions.to(self.device))
        )

    def derotate_keys(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Undo RoPE on cached keys [kv_heads, T, head_dim] (float32 result)."""
        return rotate(keys, *self.rotary(positions), inverse=True)

    def rotate_keys(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Apply RoPE for ``positions`` to pre-RoPE keys [kv_heads, T, head_dim], in the keys' dtype."""
        return rotate(keys, *self.rotary(positions)).to(keys.dtype)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32) for hidden states [L, hidden]."""
        return self.model.lm_head(hidden).float()

    def new_cache(self, layers: Sequence[LayerKV] | None = None, room: int | None = None) -> Cache:
        """A transformers cache holding ``layers`` (or empty), batch dimension added.

        Layers may hold different numbers of slots (per-layer retrieval). ``room``: slots to
        allocate past each layer's context for what will be appended (a question and its
        answer: ``question_tokens + max_new_tokens``), written in place instead of
        re-concatenating the context per token; None keeps transformers' ``DynamicCache``.
        """
        return hf_compat.new_cache(self.model.config.get_text_config(), layers, room)

    def cache_of_parts(self, parts_per_layer: Sequence[Sequence[LayerKV]], room: int) -> Cache:
        """``new_cache(per-layer concatenation of parts, room)`` without the concatenation:
        each part is written once into its layer's preallocated space (``hf_compat.cache_of_parts``)."""
        return hf_compat.cache_of_parts(parts_per_layer, room)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """RoPE in the rotate-half layout transformers uses, in float32; ``inverse`` rotates back."""
    x = x.float()
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos - rotated_half * sin if inverse else x * cos + rotated_half * sin
