"""KIVI (Liu et al. 2024): keys per channel, values per token, asymmetric min-max.

* keys: for each head and channel, groups of ``group_size`` consecutive tokens (the last
  group may be shorter) share an fp16 scale and fp16 minimum. Key outliers live in a few
  channels, so per-channel groups keep them from inflating everyone's step.
* values: for each head and token, groups of ``group_size`` consecutive channels share an
  fp16 scale and minimum (value error spreads evenly across channels of a token).

Bits per element: ``bits + 32 / group_size`` for full groups (3.0 at 2 bits, group 32);
more when a block holds fewer tokens than a group (keys of a 16-token block: 4.0).
KIVI's full-precision residual window is not part of this codec: in streamvlm the most
recent tokens live unencoded in the device tier's window anyway.
"""

from __future__ import annotations

import torch

from .base import EncodedTensor, KVCodec, QuantError, check_group_size
from .groups import num_groups
from .packing import pack_per_head, unpack_per_head
from .uniform import decode_fp16, encode_fp16


class KIVICodec(KVCodec, name="kivi2"):
    """``bits``-bit KIVI with fp16 scale and minimum per group of ``group_size``.

    Registered as ``kivi2`` (its default width); an object is named for its own width
    (``kivi4``), which is the name its encoded tensors carry.
    """

    def __init__(self, bits: int = 2, group_size: int = 32) -> None:
        if bits not in (2, 4, 8):
            raise QuantError(f"kivi: bits must be 2, 4 or 8, got {bits!r}")
        self.bits = bits
        self.group_size = check_group_size("kivi", group_size)
        self.name = f"kivi{bits}"

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        x = x.float()
        if kind == "key":
            # tokens on the last axis: a group is one channel over group_size tokens
            q = encode_fp16(x.transpose(1, 2), self.bits, self.group_size)
            codes = q["codes"].transpose(1, 2)
        else:
            q = encode_fp16(x, self.bits, self.group_size)
            codes = q["codes"]
        # codes are packed token-major ([heads, tokens, head_dim]) for both kinds
        return {"codes": pack_per_head(codes, self.bits), "scale": q["scale"], "min": q["min"]}

    def _decode(self, enc: EncodedTensor, device: torch.device) -> torch.Tensor:
        t = {k: v.to(device) for k, v in enc.tensors.items()}
        heads, tokens, head_dim = enc.shape
        grouped_len = tokens if enc.kind == "key" else head_dim
        if t["scale"].shape[-1] != num_groups(grouped_len, self.group_size):
            raise QuantError(
                f"{self.name}: encoded with another group_size than {self.group_size}; "
                "decode with a codec built with the encoding options"
            )
        codes = unpack_per_head(t["codes"], self.bits, enc.shape)
        if enc.kind == "key":
            return decode_fp16(codes.transpose(1, 2), t["scale"], t["min"], self.group_size).transpose(1, 2)
        return decode_fp16(codes, t["scale"], t["min"], self.group_size)
