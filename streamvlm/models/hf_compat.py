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
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from ..output import when_configured

# ----- caches ----------------------------------------------------------------------


def new_cache(text_config, layers: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> DynamicCache:
    """A ``DynamicCache`` holding ``layers`` (keys, values), each [kv_heads, T, head_dim], or empty.

    ``ddp_cache_data`` is the only constructor argument that fills a cache with
    existing tensors (it is named for DDP, but documented as "the passed data to
    already fill in the cache"). Without a config each layer becomes a plain
    full-attention ``DynamicLayer`` with its own length, which per-layer retrieval needs.
    """
    if not layers:
        return DynamicCache(config=text_config)
    return DynamicCache(ddp_cache_data=[(k[None], v[None]) for k, v in layers])


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
    with attention_implementation(language_model.config, STREAMVLM_SDPA):
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


def streamvlm_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA for caches whose layers hold different numbers of slots.

    With per-layer retrieval each layer attends to its own blocks, so the layers of one
    cache have different lengths, and transformers' single mask (built from layer 0's
    length) cannot serve them all. Registered without a mask function, this receives no
    mask and builds each layer's from that layer's lengths: every cached slot visible,
    new tokens causal among themselves. An explicit 4-D mask is passed through unchanged.
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and q_len > 1:
        # bottom-right aligned: query i sees cached slots and new tokens up to itself
        visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        attention_mask = visible[None, None]
    kwargs.pop("is_causal", None)
    # sdpa_attention_forward is transformers' own SDPA call (GQA expansion, dtype and
    # layout handling); reusing it keeps results identical to attn_implementation="sdpa".
    return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=False, **kwargs)


AttentionInterface.register(STREAMVLM_SDPA, streamvlm_sdpa)


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
