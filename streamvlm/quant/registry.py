"""Codec names -> codec objects."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .base import KVCodec, QuantError
from .cast import BF16Codec, FP16Codec
from .intn import IntCodec
from .kivi import KIVICodec
from .vidkv import VidKVCodec
from .vidkv_ref import VidKVRefCodec

_FACTORIES: dict[str, Callable[..., KVCodec]] = {
    "fp16": FP16Codec,
    "bf16": BF16Codec,
    "int8": lambda: IntCodec(8),
    "int4": lambda: IntCodec(4),
    "kivi2": lambda bits=2, group_size=32: KIVICodec(bits=bits, group_size=group_size),
    "vidkv-ref": VidKVRefCodec,
    "vidkv": VidKVCodec,
}
CODEC_NAMES: tuple[str, ...] = tuple(_FACTORIES)
# names that encoded tensors carry for non-default KIVI widths, so that
# ``get_codec(enc.codec)`` always finds a decoder
_ALIASES: dict[str, tuple[str, dict]] = {"kivi4": ("kivi2", {"bits": 4}), "kivi8": ("kivi2", {"bits": 8})}


def codec_options(name: str) -> tuple[str, ...]:
    """Option names ``get_codec(name, **options)`` accepts."""
    return tuple(inspect.signature(_factory(name)).parameters)


def _factory(name: str) -> Callable[..., KVCodec]:
    if name not in _FACTORIES:
        raise QuantError(f"unknown codec {name!r}; choose one of {', '.join(CODEC_NAMES)}")
    return _FACTORIES[name]


def get_codec(name: str, **options) -> KVCodec:
    """A new codec object (stateful codecs keep per-layer state: one object per model/stream)."""
    if name in _ALIASES:
        name, fixed = _ALIASES[name]
        if "bits" in options and options["bits"] != fixed["bits"]:
            raise QuantError(
                f"codec kivi{fixed['bits']} has bits={fixed['bits']}; do not pass bits={options['bits']}"
            )
        options = {**options, **fixed}
    factory = _factory(name)
    unknown = sorted(set(options) - set(codec_options(name)))
    if unknown:
        valid = ", ".join(codec_options(name)) or "none"
        raise QuantError(f"codec {name!r} has no option {', '.join(unknown)}; its options are: {valid}")
    return factory(**options)
