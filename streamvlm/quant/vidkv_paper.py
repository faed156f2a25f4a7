"""VidKV as published (Tao et al. 2025, arXiv:2503.16257): the ``vidkv-paper`` codec.

Keys: per head, the half of the channels with the largest range (max - min over the
block's tokens) is quantized at 2 bits per channel (KIVI style: groups of ``group_size``
tokens, fp16 scale and minimum). The other half is transformed with a full complex FFT
over those channels, and every real and imaginary part is stored as one sign bit, with
an fp16 mean magnitude per component per group of ``group_size`` tokens. The channel
split is chosen per block and stored with it (1 bit per channel per head).

Values: 1.58-bit ternary per channel: groups of ``group_size`` tokens of one channel
share ``gamma = mean|v|`` (fp16); codes ``round_clip(v / gamma, -1, 1)`` are stored as 2-bit
codes as in the public code. A fraction of salient tokens (largest value L2 norm, see
``selection.py``; the paper scores salience against the text) is also stored at 2 bits
per token (groups of ``group_size`` channels, fp16 scale and minimum) and replaces the
ternary reconstruction of those tokens.

Decoding follows the method, not the public code's two slips: a sign bit decodes to
``+scale`` or ``-scale`` (the code gives ``{0, scale}``) and a ternary code to
``gamma * t`` (the code drops ``gamma``). See docs/quantization.md.
"""

from __future__ import annotations

import torch

from .base import EncodedTensor, KVCodec, check_fraction, check_group_size
from .lowbit import sign_decode, sign_encode, ternary_decode, ternary_encode
from .packing import pack_per_head, unpack_per_head
from .selection import (
    channel_rows,
    key_2bit_count,
    salient_count,
    salient_tokens,
    split_indices,
    top_range_channels,
)
from .spectral import fft_components, from_fft_components
from .uniform import decode_fp16, encode_fp16


class VidKVPaperCodec(KVCodec, name="vidkv-paper", aliases=("vidkv-ref",)):
    """The published VidKV method with fp16 metadata and a per-block channel split.

    ``vidkv-ref``, its name until it was renamed for what it is, is still accepted, and
    tensors encoded under that name still decode: the format did not change.
    """

    def __init__(
        self, group_size: int = 32, key_2bit_fraction: float = 0.5, salient_fraction: float = 0.1
    ) -> None:
        self.group_size = check_group_size(self.name, group_size)
        self.key_2bit_fraction = check_fraction(self.name, "key_2bit_fraction", key_2bit_fraction, 0.0, 1.0)
        # at most half: keeps at least one non-salient token for T >= 1
        self.salient_fraction = check_fraction(self.name, "salient_fraction", salient_fraction, 0.0, 0.5)

    # keys -----------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        x = x.float()
        return self._encode_keys(x) if kind == "key" else self._encode_values(x)

    def _decode(self, enc: EncodedTensor, device: torch.device) -> torch.Tensor:
        t = {k: v.to(device) for k, v in enc.tensors.items()}
        return self._decode_keys(t, enc.shape) if enc.kind == "key" else self._decode_values(t, enc.shape)

    def _encode_keys(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heads, tokens, head_dim = x.shape
        mask = top_range_channels(x, key_2bit_count(head_dim, self.key_2bit_fraction))
        hi_idx, lo_idx = split_indices(mask)
        hi = encode_fp16(x.gather(2, channel_rows(hi_idx, tokens)).transpose(1, 2), 2, self.group_size)
        comps = fft_components(x.gather(2, channel_rows(lo_idx, tokens)))  # [heads, tokens, 2m]
        bits, scale = sign_encode(comps.transpose(1, 2), self.group_size)
        return {
            "channels": pack_per_head(mask, 1),
            "hi.codes": pack_per_head(hi["codes"].transpose(1, 2), 2),
            "hi.scale": hi["scale"],
            "hi.min": hi["min"],
            "lo.signs": pack_per_head(bits.transpose(1, 2), 1),
            "lo.scale": scale.half(),
        }

    def _decode_keys(self, t: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        heads, tokens, head_dim = shape
        mask = unpack_per_head(t["channels"], 1, (heads, head_dim)).bool()
        hi_idx, lo_idx = split_indices(mask)
        n_hi, m = hi_idx.shape[1], lo_idx.shape[1]
        out = torch.empty(shape, device=t["hi.scale"].device)
        codes = unpack_per_head(t["hi.codes"], 2, (heads, tokens, n_hi)).transpose(1, 2)
        out.scatter_(
            2,
            channel_rows(hi_idx, tokens),
            decode_fp16(codes, t["hi.scale"], t["hi.min"], self.group_size).transpose(1, 2),
        )
        bits = unpack_per_head(t["lo.signs"], 1, (heads, tokens, 2 * m)).transpose(1, 2)
        comps = sign_decode(bits, t["lo.scale"], self.group_size).transpose(1, 2)
        out.scatter_(2, channel_rows(lo_idx, tokens), from_fft_components(comps, m))
        return out

    # values ---------------------------------------------------------------------------
    def _encode_values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heads, tokens, head_dim = x.shape
        tern, gamma = ternary_encode(x.transpose(1, 2), self.group_size)
        sal = salient_tokens(x, salient_count(tokens, self.salient_fraction))
        q = encode_fp16(x[sal].view(heads, -1, head_dim), 2, self.group_size)
        return {
            "tern.codes": pack_per_head((tern + 1).transpose(1, 2), 2),
            "tern.gamma": gamma.half(),
            "salient": pack_per_head(sal, 1),
            "sal.codes": pack_per_head(q["codes"], 2),
            "sal.scale": q["scale"],
            "sal.min": q["min"],
        }

    def _decode_values(self, t: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        heads, tokens, head_dim = shape
        codes = unpack_per_head(t["tern.codes"], 2, shape).transpose(1, 2)
        out = ternary_decode(codes.to(torch.int8) - 1, t["tern.gamma"], self.group_size).transpose(1, 2)
        sal = unpack_per_head(t["salient"], 1, (heads, tokens)).bool()
        n_sal = int(sal[0].sum())
        q = unpack_per_head(t["sal.codes"], 2, (heads, n_sal, head_dim))
        out = out.contiguous()
        out[sal] = decode_fp16(q, t["sal.scale"], t["sal.min"], self.group_size).reshape(-1, head_dim)
        return out
