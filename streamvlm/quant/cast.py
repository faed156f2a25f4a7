"""Identity codecs: a cast to a 16-bit float (16 bits per element, nothing else stored)."""

from __future__ import annotations

import torch

from .base import FP16_MAX, EncodedTensor, KVCodec


class _CastCodec(KVCodec):
    storage_dtype: torch.dtype

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        return {"data": x.to(self.storage_dtype)}

    def _decode(self, enc: EncodedTensor, device: torch.device) -> torch.Tensor:
        return enc.tensors["data"].to(device)


class FP16Codec(_CastCodec, name="fp16"):
    """float16 copy; exact for float16 input."""

    storage_dtype = torch.float16
    max_abs = FP16_MAX  # beyond it the cast would silently give inf


class BF16Codec(_CastCodec, name="bf16"):
    """bfloat16 copy; exact for bfloat16 input; the float32 range."""

    storage_dtype = torch.bfloat16
    max_abs = None
