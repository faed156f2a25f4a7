"""Attention of question rows over packed KV blocks: fused Triton kernel or decode-then-attend.

``packed_attention(q, blocks, codec)`` is softmax attention (no causal mask: a question
attends to every cached token) of ``q`` ``[q_heads, queries, head_dim]`` over the tokens of
every ``(key, value)`` encoded block, plus optional dense (unquantized) keys and values such
as the sinks and the recent window. GQA: query head ``i`` reads KV head
``i // (q_heads // kv_heads)``, as transformers' ``repeat_kv`` lays them out.

Which path (``backend.use_triton``, ``STREAMVLM_KERNELS`` or ``backend=``):

* ``vidkv`` blocks on CUDA (or ``triton`` forced): ``attention_vidkv_triton``, which reads the
  packed bits inside the score and ``p @ V`` computation and never writes decoded KV; one
  partial softmax per program, block and the dense part, combined here (``combine_partials``).
* everything else: ``decode_then_attend``, i.e. ``kernels.decode`` of every block then plain
  softmax attention in float32. With ``backend="reference"`` that is the PyTorch reference
  the fused kernel is tested against (``codec.decode`` + matmul + softmax).

``traffic_model`` counts the HBM bytes of both paths (docs/quantization.md, "Fused attention
over packed blocks"). Importing this module never imports triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..quant.base import EncodedTensor, KVCodec, QuantError
from ..quant.vidkv import VidKVCodec
from .backend import launch_device, on_device, use_triton
from .dispatch import decode, standard_layout
from .partials import combine_partials, dense_partial

Block = tuple[EncodedTensor, EncodedTensor]  # (keys, values) of one layer of one block


def query_rows(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``[q_heads, queries, head_dim]`` -> ``[kv_heads, q_heads // kv_heads * queries, head_dim]`` (a view)."""
    q_heads, queries, head_dim = q.shape
    return q.reshape(kv_heads, q_heads // kv_heads * queries, head_dim)


def has_fused_attention(codec: KVCodec) -> bool:
    """Whether ``codec``'s blocks have a fused attention kernel (``vidkv``)."""
    return isinstance(codec, VidKVCodec)


def _check(q: torch.Tensor, blocks: Sequence[Block], dense: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    """KV heads, after checking that ``q``, the blocks and ``dense`` fit together."""
    if q.dim() != 3 or not q.dtype.is_floating_point:
        raise QuantError(
            f"queries must be a float tensor [q_heads, queries, head_dim], got {q.dtype} {tuple(q.shape)}; "
            "drop the batch dimension"
        )
    shapes = [(key.shape, value.shape) for key, value in blocks]
    if dense is not None:
        shapes.append((tuple(dense[0].shape), tuple(dense[1].shape)))
    if not shapes:
        raise QuantError("attention needs at least one block or dense keys and values; pass some")
    kv_heads, head_dim = shapes[0][0][0], shapes[0][0][2]
    for key_shape, value_shape in shapes:
        if (
            len(key_shape) != 3
            or key_shape != value_shape
            or (key_shape[0], key_shape[2]) != (kv_heads, head_dim)
        ):
            raise QuantError(
                f"keys {tuple(key_shape)} and values {tuple(value_shape)} must both be [{kv_heads}, tokens, "
                f"{head_dim}] like the first block; pass one layer's KV"
            )
    for key, value in blocks:
        if (key.kind, value.kind) != ("key", "value"):
            raise QuantError(f"a block is (keys, values), got ({key.kind}, {value.kind}); pass them in order")
    if len({enc.layer for block in blocks for enc in block}) > 1:
        raise QuantError("blocks of several layers were passed; attend over one layer's blocks per call")
    if q.shape[2] != head_dim or q.shape[0] % kv_heads:
        raise QuantError(
            f"queries {tuple(q.shape)} do not fit KV of {kv_heads} heads x head_dim {head_dim}; "
            "query heads must be a multiple of KV heads"
        )
    return kv_heads


def decode_then_attend(
    q: torch.Tensor,
    blocks: Sequence[Block],
    codec: KVCodec,
    *,
    dense: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode every block (``kernels.decode``), then softmax attention in float32.

    With ``backend="reference"`` this is the reference of ``packed_attention``: ``codec.decode``
    then ``softmax(q k^T * scale) @ v``. Returns ``[q_heads, queries, head_dim]`` in ``q.dtype``.
    """
    kv_heads = _check(q, blocks, dense)
    keys, values = _decoded(blocks, codec, q.device, dense, backend)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = query_rows(q.float(), kv_heads) @ keys.transpose(1, 2) * scale
    out = torch.softmax(scores, dim=-1) @ values
    return out.reshape(q.shape).to(q.dtype)


def decode_then_score(
    q: torch.Tensor,
    key_enc: EncodedTensor,
    codec: KVCodec,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Reference of ``packed_scores``: ``q k^T * scale`` over the decoded keys, float32."""
    _check_scores(q, key_enc)
    keys = decode(key_enc, codec, q.device, torch.float32, backend=backend)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = query_rows(q.float(), key_enc.shape[0]) @ keys.transpose(1, 2) * scale
    return scores.reshape(*q.shape[:2], -1)


def _decoded(
    blocks: Sequence[Block],
    codec: KVCodec,
    device: torch.device,
    dense: tuple[torch.Tensor, torch.Tensor] | None,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    keys = [decode(key, codec, device, torch.float32, backend=backend) for key, _ in blocks]
    values = [decode(value, codec, device, torch.float32, backend=backend) for _, value in blocks]
    if dense is not None:
        keys.append(dense[0].to(device, torch.float32))
        values.append(dense[1].to(device, torch.float32))
    return torch.cat(keys, dim=1), torch.cat(values, dim=1)


def _check_scores(q: torch.Tensor, key_enc: EncodedTensor) -> None:
    if key_enc.kind != "key":
        raise QuantError(f"scores need a key block, got a {key_enc.kind} block; pass the keys")
    if q.dim() != 3 or q.shape[2] != key_enc.shape[2] or q.shape[0] % key_enc.shape[0]:
        raise QuantError(
            f"queries {tuple(q.shape)} do not fit keys {key_enc.shape}; "
            "pass [q_heads, queries, head_dim] with q_heads a multiple of KV heads"
        )


def packed_attention(
    q: torch.Tensor,
    blocks: Sequence[Block],
    codec: KVCodec,
    *,
    dense: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale: float | None = None,
    backend: str | None = None,
    tokens_per_program: int | None = None,
) -> torch.Tensor:
    """Softmax attention of ``q`` over every block's tokens and ``dense`` (keys, values).

    ``q`` ``[q_heads, queries, head_dim]`` (RoPE applied, as the blocks' keys are); ``blocks``
    one layer's ``(keys, values)`` encoded by ``codec`` (the codec that holds the layer's
    ``vidkv`` channel tiers); ``dense`` float ``[kv_heads, tokens, head_dim]`` each; ``scale``
    defaults to ``head_dim ** -0.5``. Returns ``[q_heads, queries, head_dim]`` in ``q.dtype``.
    ``tokens_per_program`` tunes the fused kernel's split (default
    ``attention_vidkv_triton.TOKENS_PER_PROGRAM``).
    """
    kv_heads = _check(q, blocks, dense)
    fusable = all(standard_layout(codec, key.shape[1]) for key, _ in blocks)
    if not blocks or not fusable or not has_fused_attention(codec) or not use_triton(q.device, backend):
        return decode_then_attend(q, blocks, codec, dense=dense, scale=scale, backend=backend)
    for key, value in blocks:
        codec.check_decodes(key)
        codec.check_decodes(value)
    from . import attention_vidkv_triton as fused

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    device = launch_device(q.device)
    options = {} if tokens_per_program is None else {"tokens_per_program": tokens_per_program}
    with on_device(device):
        rows = query_rows(q.to(device, torch.float32), kv_heads)
        # the layer's channel tiers are frozen: one transform of the queries serves every block
        ordered = fused.tier_queries(rows, codec, blocks[0][0].layer, scale)
        partials = [fused.packed_partial(ordered, key, value, codec, **options) for key, value in blocks]
        if dense is not None:
            partials.append(dense_partial(rows * scale, dense[0].to(device), dense[1].to(device)))
        out = combine_partials(partials)
    return out.reshape(q.shape).to(q.dtype)


def packed_scores(
    q: torch.Tensor,
    key_enc: EncodedTensor,
    codec: KVCodec,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention logits ``q k^T * scale`` of ``q`` against one key block, float32 ``[q_heads, queries, tokens]``.

    Fused (read from the packed bits) for ``vidkv`` where ``use_triton``; else ``decode_then_score``.
    """
    _check_scores(q, key_enc)
    fusable = standard_layout(codec, key_enc.shape[1])
    if not fusable or not has_fused_attention(codec) or not use_triton(q.device, backend):
        return decode_then_score(q, key_enc, codec, scale=scale, backend=backend)
    codec.check_decodes(key_enc)
    from . import attention_vidkv_triton as fused

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    device = launch_device(q.device)
    with on_device(device):
        rows = query_rows(q.to(device, torch.float32), key_enc.shape[0])
        scores = fused.packed_scores(fused.tier_queries(rows, codec, key_enc.layer, scale), key_enc, codec)
    return scores.reshape(*q.shape[:2], -1)


# HBM traffic model --------------------------------------------------------------------------

FLOAT32 = 4
COMPLEX64 = 8


@dataclass(frozen=True)
class Traffic:
    """HBM bytes of one attention path over the retrieved blocks of every layer (one question)."""

    per_question: int  # moved once, when the question's blocks are made ready (decode)
    per_token: int  # moved by each generated token's attention over those blocks
    resident: int  # device bytes the blocks occupy while the answer is generated


def key_decode_bytes_per_row(head_dim: int, sign_channels: int, out_bytes: int) -> int:
    """HBM bytes ``vidkv_triton.decode_keys`` moves per head and token, beyond reading the packed bits.

    The kernel writes the uniform channels and the ``m`` float32 rfft components; then the
    torch ops of ``spectral.from_rfft_components`` and the cast and scatter each read and
    write whole tensors (cuFFT's internal passes not counted: a lower bound).
    """
    m = sign_channels
    k = m // 2 + 1  # complex bins of the inverse rfft
    terms = {
        "kernel: uniform channels": (head_dim - m) * out_bytes,
        "kernel: components": m * FLOAT32,
        "zeros_like(imag)": k * FLOAT32,
        "imag[...] = c[k:]": 2 * (m - k) * FLOAT32,
        "c[:k].contiguous()": 2 * k * FLOAT32,
        "torch.complex": 2 * k * COMPLEX64,
        "irfft": k * COMPLEX64 + m * FLOAT32,
        ".to(dtype)": m * FLOAT32 + m * out_bytes,
        "scatter_": 2 * m * out_bytes,
    }
    return sum(terms.values())


def traffic_model(
    *,
    layers: int,
    kv_heads: int,
    head_dim: int,
    tokens: int,
    block_tokens: int,
    rows: int,
    key_bits: float,
    value_bits: float,
    sign_channels: int,
    out_bytes: int = 2,
    tokens_per_program: int = 256,
) -> dict[str, Traffic]:
    """HBM bytes of decode-then-attend and of the fused path over ``tokens`` retrieved tokens.

    ``key_bits``/``value_bits``: stored bits per element, metadata included
    (``EncodedTensor.bits_per_element``); ``rows``: query rows per KV head in a decode step
    (query heads per KV head); ``out_bytes``: the decoded cache's element size (bf16: 2).
    What both paths share is left out: the host-to-device copy of the packed blocks, the
    queries and outputs (``rows x head_dim`` per head), the model's weights.

    * decode then attend: once per question, decode reads the packed bits and writes the
      cache (keys through the irfft's intermediates, ``key_decode_bytes_per_row``); every
      generated token's attention then reads keys and values at ``out_bytes``.
    * fused: every generated token reads the packed bits, and each program writes a partial
      (``rows x (head_dim + 2)`` floats) that the combine reads back (small enough to stay in
      L2 on an H100; counted anyway). The queries' rfft transform is ``rows x m`` floats.
    """
    head_tokens = layers * kv_heads * tokens
    packed = round(head_tokens * head_dim * (key_bits + value_bits) / 8)
    decoded_row = 2 * head_dim * out_bytes
    decode_writes = head_tokens * (
        key_decode_bytes_per_row(head_dim, sign_channels, out_bytes) + head_dim * out_bytes
    )
    blocks = -(-tokens // block_tokens)
    programs = layers * kv_heads * blocks * -(-block_tokens // tokens_per_program)
    partials = 2 * programs * rows * (head_dim + 2) * FLOAT32
    return {
        "decode then attend": Traffic(
            packed + decode_writes, head_tokens * decoded_row, head_tokens * decoded_row
        ),
        "fused": Traffic(0, packed + partials, packed),
    }
