"""KV-cache codecs: bit-exact packing, PyTorch reference implementations, honest bit counts.

``get_kv_codec(name, **options)`` builds one of ``KV_CODECS`` (``streamvlm.registry``);
``codec.encode(x, kind, layer)`` turns one layer's keys or values of one block
(``[kv_heads, tokens, head_dim]``) into an ``EncodedTensor`` of named CPU tensors, and
``codec.decode`` brings it back. These are tensor codecs; ``streamvlm.memory.codec`` holds
the block codecs that apply them to whole blocks for a tier. See docs/quantization.md for
the formats and measured errors.
"""

from ..registry import KV_CODECS
from .base import EncodedTensor, KVCodec, QuantError
from .metrics import AttentionError, attention_error, relative_error
from .packing import PackedCodes, pack_bits, pack_trits, packed_length, unpack_bits, unpack_trits
from .registry import get_kv_codec, kv_codec_options

__all__ = [
    "KV_CODECS",
    "AttentionError",
    "EncodedTensor",
    "KVCodec",
    "PackedCodes",
    "QuantError",
    "attention_error",
    "get_kv_codec",
    "kv_codec_options",
    "pack_bits",
    "pack_trits",
    "packed_length",
    "relative_error",
    "unpack_bits",
    "unpack_trits",
]
