"""Per-token integer codecs (``int8``, ``int4``).

Asymmetric min-max over the whole head_dim of each token of each head, fp16 scale and fp16
minimum per (head, token): ``bits + 32 / head_dim`` bits per element (8.25 / 4.25 at
head_dim 128). Asymmetric rather than symmetric because post-RoPE keys and biased values
are not centred on zero per token, and it costs only the 16-bit minimum.
"""

from __future__ import annotations

from functools import partial

import torch

from ..registry import KV_CODECS
from .base import EncodedTensor, KVCodec
from .packing import pack_per_head, unpack_per_head
from .uniform import decode_fp16, encode_fp16


class IntCodec(KVCodec):
    """``bits``-bit per-token asymmetric quantization (same format for keys and values)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"int{bits}"

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        q = encode_fp16(x.float(), self.bits, group=x.shape[-1])
        return {"codes": pack_per_head(q["codes"], self.bits), "scale": q["scale"], "min": q["min"]}

    def _decode(self, enc: EncodedTensor, device: torch.device) -> torch.Tensor:
        t = {k: v.to(device) for k, v in enc.tensors.items()}
        codes = unpack_per_head(t["codes"], self.bits, enc.shape)
        return decode_fp16(codes, t["scale"], t["min"], group=enc.shape[-1])


# one name per width, each a codec without options
KV_CODECS.add("int8", partial(IntCodec, 8))
KV_CODECS.add("int4", partial(IntCodec, 4))
