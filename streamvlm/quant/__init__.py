"""KV-cache codecs: bit-exact packing, PyTorch reference implementations, honest bit counts.

``get_codec(name, **options)`` builds one of ``CODEC_NAMES``; ``codec.encode(x, kind, layer)``
turns one layer's keys or values of one block (``[kv_heads, tokens, head_dim]``) into an
``EncodedTensor`` of named CPU tensors, and ``codec.decode`` brings it back. See
docs/quantization.md for the formats and measured errors.
"""

from .base import EncodedTensor, KVCodec, QuantError
from .metrics import AttentionError, attention_error, relative_error
from .packing import PackedCodes, pack_bits, pack_trits, packed_length, unpack_bits, unpack_trits
from .registry import CODEC_NAMES, codec_options, get_codec

__all__ = [
    "CODEC_NAMES",
    "AttentionError",
    "EncodedTensor",
    "KVCodec",
    "PackedCodes",
    "QuantError",
    "attention_error",
    "codec_options",
    "get_codec",
    "pack_bits",
    "pack_trits",
    "packed_length",
    "relative_error",
    "unpack_bits",
    "unpack_trits",
]
