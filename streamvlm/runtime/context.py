"""Assembling attention context from sinks and blocks, and cutting new KV out of a cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..memory.block import Block
from ..models.base import LayerKV
from ..models.hf_compat import cached_layers


def concat_layers(parts: Sequence[Sequence[LayerKV]]) -> list[LayerKV]:
    """Concatenate several per-layer KV lists along the token axis, layer by layer."""
    if len(parts) == 1:
        return list(parts[0])
    return [
        (torch.cat([p[i][0] for p in parts], dim=1), torch.cat([p[i][1] for p in parts], dim=1))
        for i in range(len(parts[0]))
    ]


def new_kv_from_cache(cache, start: int) -> tuple[LayerKV, ...]:
    """The KV a forward appended to ``cache`` after slot ``start``, batch dim dropped.

    Cloned, so a block does not pin the whole (window-sized) cache tensor in memory.
    """
    return tuple((k[:, start:].clone(), v[:, start:].clone()) for k, v in cached_layers(cache))


def cache_footprint(cache) -> tuple[int, int]:
    """Tokens of the longest layer in ``cache`` and the bytes of its keys and values over every layer."""
    layers = cached_layers(cache)
    tokens = max((k.shape[-2] for k, _ in layers), default=0)
    return tokens, sum(k.nbytes + v.nbytes for k, v in layers)


def layer_parts(sink: Sequence[LayerKV], blocks: Sequence[Block]) -> list[list[LayerKV]]:
    """Each layer's KV in pieces: the sink, then ``blocks`` in order (every layer the same blocks)."""
    return [[sink_layer, *(b.layers[i] for b in blocks)] for i, sink_layer in enumerate(sink)]


def per_layer_parts(
    sink: Sequence[LayerKV], blocks: dict[int, Block], layer_block_ids: Sequence[Sequence[int]]
) -> list[list[LayerKV]]:
    """Each layer's KV in pieces: the sink, then that layer's blocks in the order given."""
    return [[sink[i], *(blocks[b].layers[i] for b in ids)] for i, ids in enumerate(layer_block_ids)]


def per_layer_context(
    sink: Sequence[LayerKV], blocks: dict[int, Block], layer_block_ids: Sequence[Sequence[int]]
) -> list[LayerKV]:
    """Each layer's KV: the sink, then that layer's blocks in the order given, concatenated."""
    return [
        concat_layers([[part] for part in parts])[0]
        for parts in per_layer_parts(sink, blocks, layer_block_ids)
    ]


def scatter_tokens(tokens: int, parts: Sequence[tuple[torch.Tensor, Sequence[LayerKV]]]) -> list[LayerKV]:
    """Per-layer KV of ``tokens`` slots filled from ``parts``, each ``(slots [n] long, layers
    of n tokens)``; slots no part fills are left out (the result keeps the filled ones, in
    slot order)."""
    filled = torch.zeros(tokens, dtype=torch.bool)
    for slots, _ in parts:
        filled[slots] = True
    out = []
    for i in range(len(parts[0][1])):
        k0, v0 = parts[0][1][i]
        keys = k0.new_zeros(k0.shape[0], tokens, k0.shape[2])
        values = v0.new_zeros(v0.shape[0], tokens, v0.shape[2])
        for slots, layers in parts:
            keys[:, slots.to(keys.device)] = layers[i][0]
            values[:, slots.to(values.device)] = layers[i][1]
        where = filled.to(keys.device)
        out.append((keys[:, where], values[:, where]))
    return out
