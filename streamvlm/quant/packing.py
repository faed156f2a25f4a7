"""Bit-exact packing of small unsigned codes into ``uint8``.

Two layouts, both along the last dimension and both little-endian inside a byte:

* ``pack_bits``: n-bit codes (n in 1, 2, 4, 8), ``8 // n`` codes per byte; code ``i`` of a
  byte sits at bits ``[n*i, n*i + n)``.
* ``pack_trits``: ternary codes {0, 1, 2}, 5 per byte as the base-3 number
  ``c0 + 3*c1 + 9*c2 + 27*c3 + 81*c4`` (at most 242 < 256), i.e. 1.6 bits per trit
  instead of the 2 bits a 2-bit layout spends.

The last dimension is padded with zero codes up to a whole byte. The original length is
not stored inside the bytes (it would cost a tensor per packed array); callers keep it,
``PackedCodes`` bundles the two for callers that want them together, and the codecs
recover it from ``EncodedTensor.shape``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import QuantError, codes_in_range_guaranteed

BIT_WIDTHS = (1, 2, 4, 8)
TRITS_PER_BYTE = 5


@dataclass(frozen=True)
class PackedCodes:
    """Packed bytes plus what is needed to unpack them."""

    data: torch.Tensor  # uint8 [..., packed_length(length)]
    length: int  # codes along the last dimension before padding
    bits: int | None  # 1, 2, 4 or 8; None for base-3 trits

    def unpack(self) -> torch.Tensor:
        if self.bits is None:
            return unpack_trits(self.data, self.length)
        return unpack_bits(self.data, self.bits, self.length)

    @classmethod
    def of_bits(cls, codes: torch.Tensor, bits: int) -> PackedCodes:
        return cls(pack_bits(codes, bits), int(codes.shape[-1]), bits)

    @classmethod
    def of_trits(cls, codes: torch.Tensor) -> PackedCodes:
        return cls(pack_trits(codes), int(codes.shape[-1]), None)


def packed_length(length: int, bits: int | None) -> int:
    """Bytes that ``length`` codes take along the last dimension (``bits=None``: trits)."""
    per_byte = TRITS_PER_BYTE if bits is None else 8 // _check_bits(bits)
    return -(-length // per_byte)


def _check_bits(bits: int) -> int:
    if bits not in BIT_WIDTHS:
        raise QuantError(f"cannot pack {bits}-bit codes; use one of {BIT_WIDTHS}")
    return bits


def _check_codes(codes: torch.Tensor, limit: int, what: str) -> torch.Tensor:
    validate_codes(codes, limit, what)
    return codes.to(torch.int32)


def validate_codes(codes: torch.Tensor, limit: int, what: str) -> None:
    """Raise ``QuantError`` unless ``codes`` is an integer tensor of at least one dimension
    with values in ``[0, limit)`` (``what`` names them in the message).

    The range is read back (a device sync off the CPU) only where the caller cannot vouch
    for it: codes a codec makes while encoding are in range by construction, and are
    checked on the device without a read (``torch._assert_async``) when not on the CPU.
    """
    if codes.dtype.is_floating_point or codes.dtype.is_complex:
        raise QuantError(f"{what} codes must be an integer tensor, got {codes.dtype}; round and cast first")
    if codes.dim() == 0:
        raise QuantError(f"{what} codes must have at least one dimension; reshape to [..., n]")
    if codes_in_range_guaranteed():
        if codes.numel() and codes.device.type != "cpu":
            wide = codes.to(torch.int32)  # uint8 against 256 would wrap; bool has no aminmax on every device
            torch._assert_async(
                ((wide >= 0) & (wide < limit)).all(), f"{what} codes outside [0, {limit - 1}]"
            )
        return
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= limit):
        raise QuantError(
            f"{what} codes must lie in [0, {limit - 1}], got [{int(codes.min())}, {int(codes.max())}]"
        )


def _pad_last(codes: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -codes.shape[-1] % multiple
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    return codes


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit codes along the last dimension into uint8 (zero padded)."""
    per = 8 // _check_bits(bits)
    c = _pad_last(_check_codes(codes, 1 << bits, f"{bits}-bit"), per)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // per, per)  # explicit: -1 is ambiguous with 0 rows
    shifts = torch.arange(per, device=c.device, dtype=torch.int32) * bits
    # fields do not overlap, so the sum is the bitwise OR of the shifted codes
    return (c << shifts).sum(dim=-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 codes ``[..., length]``."""
    per = 8 // _check_bits(bits)
    _check_packed(packed, length, bits, f"{bits}-bit codes")
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    c = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return c.reshape(*packed.shape[:-1], c.shape[-2] * c.shape[-1])[..., :length].to(torch.uint8)


def _check_packed(packed: torch.Tensor, length: int, bits: int | None, what: str) -> None:
    if packed.dtype != torch.uint8:
        raise QuantError(f"packed {what} must be uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_length(length, bits):
        raise QuantError(
            f"{packed.shape[-1]} packed bytes cannot hold exactly {length} {what}; "
            f"expected {packed_length(length, bits)}"
        )


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes {0, 1, 2} along the last dimension, 5 per byte (base 3, zero padded)."""
    c = _pad_last(_check_codes(codes, 3, "ternary"), TRITS_PER_BYTE)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // TRITS_PER_BYTE, TRITS_PER_BYTE)
    weights = _trit_weights(c.device)
    return (c * weights).sum(dim=-1).to(torch.uint8)


def _trit_weights(device: torch.device) -> torch.Tensor:
    """``3 ** i`` for each trit of a byte, made on ``device`` (no upload from the host)."""
    return torch.pow(3, torch.arange(TRITS_PER_BYTE, device=device, dtype=torch.int32))


def unpack_trits(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of ``pack_trits``: uint8 codes in {0, 1, 2}, ``[..., length]``."""
    _check_packed(packed, length, None, "trits")
    weights = _trit_weights(packed.device)
    c = (packed.to(torch.int32).unsqueeze(-1) // weights) % 3
    return c.reshape(*packed.shape[:-1], c.shape[-2] * c.shape[-1])[..., :length].to(torch.uint8)


def pack_per_head(codes: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Pack ``[heads, ...]`` codes as one row per head (``bits=None``: trits).

    One row per head keeps padding to under a byte per head whatever the inner shape
    (head_dim 2 at 2 bits would otherwise pad every token), and keeps heads separable.
    """
    flat = codes.reshape(codes.shape[0], -1)
    return pack_trits(flat) if bits is None else pack_bits(flat, bits)


def unpack_per_head(packed: torch.Tensor, bits: int | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_per_head``: uint8 codes of ``shape`` (``shape[0]`` heads)."""
    length = 1
    for s in shape[1:]:
        length *= int(s)
    flat = unpack_trits(packed, length) if bits is None else unpack_bits(packed, bits, length)
    return flat.reshape(shape)
