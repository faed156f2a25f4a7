"""Every use of transformers internals, in one place, each with the reason streamvlm needs it.

streamvlm drives the language model below ``generate()``: it fills caches from stored
blocks, reads back the KV a forward appended, evaluates the model's own rotary
embedding, swaps the attention function per call and captures attention projections.
Those reach past transformers' documented surface (private attributes, module layout,
names renamed between releases), so they live here and nowhere else: a new
transformers release is checked by tests/test_transformers_compat.py and adapted in
this file. The range it is tested on is the ``transformers`` requirement in
pyproject.toml.

Everything else should use public API only (model and config classes,
``from_pretrained``, ``get_text_config``, ``get_input_embeddings``); what a model
family holds of its own (vision tower, ``image_newline``) stays in its backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.nn.attention.bias import CausalBias, causal_lower_right
from transformers import AttentionInterface, Cache, DynamicCache, DynamicLayer
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from ..output import when_configured

# ----- caches ----------------------------------------------------------------------


def new_cache(
    text_config, layers: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None, room: int | None = None
) -> Cache:
    """A cache holding ``layers`` (keys, values), each [kv_heads, T, head_dim], or empty.

    Layers may hold different numbers of slots (per-layer retrieval). With ``room`` each
    layer is a ``PreallocatedLayer`` with space for ``room`` more slots past its own
    length, so the tokens a question and its answer append are written in place instead
    of re-concatenating the whole context per token. Without it the cache is a
    ``DynamicCache``: ``ddp_cache_data`` is the only constructor argument that fills one
    with existing tensors (it is named for DDP, but documented as "the passed data to
    already fill in the cache"), and without a config each layer becomes a plain
    full-attention ``DynamicLayer`` with its own length.
    """
    if not layers:
        return DynamicCache(config=text_config)
    if room is None:
        return DynamicCache(ddp_cache_data=[(k[None], v[None]) for k, v in layers])
    # ``Cache(layers=...)`` is transformers' constructor for a cache of given layer objects
    return Cache(layers=[PreallocatedLayer(k[None], v[None], room) for k, v in layers])


def cache_of_parts(
    parts_per_layer: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]], room: int
) -> Cache:
    """A cache of ``PreallocatedLayer`` s whose layer ``i`` holds ``parts_per_layer[i]`` (each
    (keys, values) [kv_heads, t, head_dim]) one after another, with ``room`` free slots after
    them: each part is copied once, straight into the layer's space, where concatenating the
    parts first and then building the cache would copy the whole context twice."""
    return Cache(layers=[PreallocatedLayer.of_parts(parts, room) for parts in parts_per_layer])


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose appends are written into space allocated up front.

    ``DynamicLayer.update`` concatenates the whole layer with the new tokens, so decoding
    an answer over T cached slots copies T slots per layer per token. This layer keeps
    buffers of ``len + room`` slots and writes each update into the next free slice;
    ``keys`` / ``values`` are views of the filled part, so attention and
    ``cached_layers`` read exactly what a ``DynamicLayer`` would hold. Appending past the
    room reallocates at twice the size (rare: the room is sized for the answer).
    Batch 1, append only, as streamvlm's caches are.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        """``keys`` / ``values`` [1, kv_heads, T, head_dim] are copied in, with ``room`` free slots after them."""
        super().__init__()
        self._key_space = _with_room(keys, room)
        self._value_space = _with_room(values, room)
        self._view(keys.shape[-2])
        self.device = keys.device
        self.is_initialized = True

    @classmethod
    def of_parts(cls, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], room: int) -> PreallocatedLayer:
        """A layer holding ``parts`` ([kv_heads, t, head_dim] each, in order), each copied once
        into its slice of the space, with ``room`` free slots after them."""
        (k0, v0), length = parts[0], sum(k.shape[-2] for k, _ in parts)
        layer = cls(k0[None, :, :0], v0[None, :, :0], length + room)
        for keys, values in parts:
            layer.update(keys[None], values[None])
        return layer

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self._key_space.shape[-2]:
            self._key_space = _with_room(self.keys, max(end, 2 * self._key_space.shape[-2]) - start)
            self._value_space = _with_room(self.values, self._key_space.shape[-2] - start)
        self._key_space[..., start:end, :].copy_(key_states)
        self._value_space[..., start:end, :].copy_(value_states)
        self._view(end)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self._view(self.keys.shape[-2] + tokens_to_remove)

    def reset(self) -> None:
        self._view(0)

    @property
    def capacity(self) -> int:
        """Slots the layer holds without reallocating."""
        return self._key_space.shape[-2]

    def _view(self, length: int) -> None:
        self.keys = self._key_space[..., :length, :]
        self.values = self._value_space[..., :length, :]


def _with_room(x: torch.Tensor, room: int) -> torch.Tensor:
    """A new tensor of ``x``'s shape with ``room`` more slots along dim -2, ``x`` copied to its start."""
    space = x.new_empty(*x.shape[:-2], x.shape[-2] + room, x.shape[-1])
    space[..., : x.shape[-2], :].copy_(x)
    return space


def cached_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values) in ``cache``, batch dimension dropped: [kv_heads, T, head_dim].

    Views, not copies. transformers 5 keeps them as ``cache.layers[i].keys / .values``
    (4.x had ``key_cache`` lists); no public method returns one layer's tensors.
    """
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]


# ----- the language model ----------------------------------------------------------


def prefill(
    language_model: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Run the text model on ``inputs_embeds`` [1, L, hidden] against ``cache``; hidden states [1, L, hidden].

    The cache goes in as ``cache=``: 5.24 renamed ``past_key_values`` to ``cache`` and
    5.40 removes the old name. Past 5.40 an old-name argument would fall into the
    model's ``**kwargs`` and the cache would silently stay empty.
    """
    # the implementation the model was loaded with picks the streaming form of it
    streaming = streaming_attention(language_model.config._attn_implementation)
    with attention_implementation(language_model.config, streaming):
        out = language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            cache=cache,
            attention_mask=attention_mask,
            use_cache=True,
        )
    return out.last_hidden_state


def rotary_cos_sin(
    language_model: torch.nn.Module, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own (cos, sin) for ``position_ids`` in its layout: each [T, head_dim], float32.

    ``rotary_emb`` is the text model's submodule that every decoder layer's RoPE comes
    from (mRoPE sections included); streamvlm (de)rotates stored keys with exactly it.
    It reads only the dtype and device of its first argument, so an empty probe serves.
    """
    probe = torch.empty(0, device=position_ids.device, dtype=torch.float32)
    cos, sin = language_model.rotary_emb(probe, position_ids)
    return cos[0].float(), sin[0].float()


@contextmanager
def projection_outputs(
    language_model: torch.nn.Module, projection: str, save: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """While the block runs, call ``save(layer_index, output)`` with each layer's ``projection`` output.

    ``projection`` is ``"q_proj"``, ``"k_proj"`` or ``"v_proj"`` of ``self_attn``; the
    output is [1, L, heads * head_dim], before RoPE. Attention exposes no hook of its
    own for its queries and keys before rotation, so a forward hook on the projection
    module is the way to read them.
    """
    handles = [
        getattr(layer.self_attn, projection).register_forward_hook(
            lambda _module, _inputs, output, i=i: save(i, output)
        )
        for i, layer in enumerate(language_model.layers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----- attention ---------------------------------------------------------------------

STREAMVLM_SDPA = "streamvlm_sdpa"
STREAMVLM_FLASH = "streamvlm_flash_attention_2"


def causal_pattern(q_len: int, kv_len: int) -> tuple[CausalBias | None, bool]:
    """``(attn_mask, is_causal)`` for SDPA: ``q_len`` new tokens after ``kv_len - q_len`` cached slots.

    Each query sees every cached slot and the new tokens up to itself (causal aligned to
    the bottom right). Said without a materialised mask wherever possible, because any
    tensor mask rules out SDPA's flash and cuDNN backends: one query sees everything (no
    mask), a prefill over an empty cache is plain ``is_causal``, and new tokens after a
    cached prefix are a ``causal_lower_right`` bias, which the flash and memory-efficient
    backends take as their own causal variant and the others materialise.
    """
    if q_len == 1:
        return None, False
    if q_len == kv_len:
        return None, True
    return causal_lower_right(q_len, kv_len), False


def streamvlm_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA for caches whose layers hold different numbers of slots.

    With per-layer retrieval each layer attends to its own blocks, so the layers of one
    cache have different lengths, and transformers' single mask (built from layer 0's
    length) cannot serve them all. Registered without a mask function, this receives no
    mask and takes each layer's causal pattern from that layer's lengths
    (``causal_pattern``). An explicit 4-D mask is passed through unchanged.
    """
    kwargs.pop("is_causal", None)
    is_causal = False
    if attention_mask is None:
        attention_mask, is_causal = causal_pattern(query.shape[2], key.shape[2])
    # sdpa_attention_forward is transformers' own SDPA call (GQA expansion, dtype and
    # layout handling); reusing it keeps results identical to attn_implementation="sdpa".
    # It slices the keys to the queries' length when is_causal comes with no mask (its
    # empty-static-cache shortcut), so is_causal is only ever set where the lengths match.
    return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=is_causal, **kwargs)


def streamvlm_flash_attention_2(module, query, key, value, attention_mask, **kwargs):
    """flash-attn for the language model, with each layer's own cache length (per-layer retrieval).

    flash-attn (2.1 on) aligns its causal mask to the bottom right, which is exactly
    "every cached slot visible, new tokens causal among themselves", so it needs no mask
    whatever a layer's length. An explicit 4-D mask (a reference or a masked prefill) has
    no flash form and goes to ``streamvlm_sdpa``.
    """
    if attention_mask is not None:
        return streamvlm_sdpa(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    # Without a mask transformers reads position_ids to detect packed sequences (a host sync
    # per layer), and stream positions with gaps (pruned tokens, retrieved blocks) would be
    # taken for several sequences: this call is always one sequence over its cache.
    kwargs.pop("position_ids", None)
    return flash_attention_forward(module, query, key, value, None, is_causal=query.shape[2] > 1, **kwargs)


def flash_causal_is_bottom_right() -> bool:
    """Whether the installed flash-attn aligns its causal mask to the bottom right (2.1 on), as
    ``streamvlm_flash_attention_2`` needs; transformers' own check, which reads the version."""
    return not flash_attn_supports_top_left_mask()


AttentionInterface.register(STREAMVLM_SDPA, streamvlm_sdpa)
AttentionInterface.register(STREAMVLM_FLASH, streamvlm_flash_attention_2)

# The language model's streaming attention for each implementation a model is loaded with
# (config.ATTENTION_IMPLEMENTATIONS). eager has no per-layer-lengths form of its own: the
# language model runs SDPA's math for it (the vision tower still runs eager).
_STREAMING_ATTENTION = {"flash_attention_2": STREAMVLM_FLASH}


def streaming_attention(loaded: str) -> str:
    """The attention function streamvlm's prefills run for a model loaded with attention ``loaded``."""
    return _STREAMING_ATTENTION.get(loaded, STREAMVLM_SDPA)


def set_attention_implementation(config, name: str) -> None:
    """Make the modules holding ``config`` use attention ``name`` from their next call on.

    Attention modules look up ``config._attn_implementation`` on every call; the public
    ``set_attn_implementation`` walks and re-checks the whole model, which is too much to
    do per forward. Setting the attribute also sets it on the config's sub-configs.
    """
    config._attn_implementation = name


@contextmanager
def attention_implementation(config, name: str) -> Iterator[None]:
    """Use attention ``name`` for the modules holding ``config`` while the block runs.

    Set per call rather than for good so that plain ``model(...)`` calls (references,
    other users of the model) keep the model's own implementation. Callers hold the
    engine's device lock, so no other forward runs meanwhile.
    """
    previous = config._attn_implementation
    set_attention_implementation(config, name)
    try:
        yield
    finally:
        set_attention_implementation(config, previous)


# ----- loading -----------------------------------------------------------------------


def checkpoint_file(name: str, filename: str) -> str | None:
    """The path of ``filename`` in checkpoint ``name`` (a directory, the hub cache or the hub), or None.

    ``cached_file`` resolves all three the way ``from_pretrained`` does; its private
    ``_raise_exceptions_for_missing_entries`` turns "the checkpoint has no such file"
    into None instead of an error, which optional processor configs need.
    """
    return cached_file(name, filename, _raise_exceptions_for_missing_entries=False)


@contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """Show or hide transformers' progress bars ("Loading weights", hub downloads) while the block runs.

    ``disable_progress_bar`` is transformers' own switch for its tqdm bars and also
    turns off the hub's download bars. The previous setting is restored afterwards, so
    the process-wide choice of whoever else uses transformers outlives the load.
    """
    before = hf_logging.is_progress_bar_enabled()
    if shown:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()


# ----- output ------------------------------------------------------------------------

_level_before_quiet: int | None = None  # transformers' log level when quiet output began


def _configure_logging(verbose: bool) -> None:
    """Quiet: transformers logs errors only. Verbose: back to its level from before (its default or TRANSFORMERS_VERBOSITY)."""
    global _level_before_quiet
    if not verbose and _level_before_quiet is None:
        _level_before_quiet = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    elif verbose and _level_before_quiet is not None:
        hf_logging.set_verbosity(_level_before_quiet)
        _level_before_quiet = None


when_configured(_configure_logging)
