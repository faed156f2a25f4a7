"""Bit-exact packing of n-bit codes and base-3 trits (streamvlm.quant.packing)."""

from __future__ import annotations

import pytest
import torch

from streamvlm.quant import (
    PackedCodes,
    QuantError,
    pack_bits,
    pack_trits,
    packed_length,
    unpack_bits,
    unpack_trits,
)
from streamvlm.quant.packing import pack_per_head, unpack_per_head

LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 127, 128, 129, 1001]


def _codes(shape: tuple[int, ...], limit: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, limit, shape, generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("length", LENGTHS)
def test_bits_round_trip_is_exact(bits: int, length: int) -> None:
    codes = _codes((3, 2, length), 1 << bits, seed=length)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, 2, -(-length * bits // 8)) == (3, 2, packed_length(length, bits))
    assert torch.equal(unpack_bits(packed, bits, length), codes)


@pytest.mark.parametrize("length", LENGTHS)
def test_trits_round_trip_is_exact(length: int) -> None:
    codes = _codes((2, 3, length), 3, seed=length)
    packed = pack_trits(codes)
    assert packed.shape == (2, 3, -(-length // 5)) == (2, 3, packed_length(length, None))
    assert int(packed.max()) <= 242
    assert torch.equal(unpack_trits(packed, length), codes)


def test_every_trit_byte_round_trips() -> None:
    # all 3^5 = 243 byte values are valid 5-trit groups and come back unchanged
    every = torch.arange(243, dtype=torch.uint8)
    assert torch.equal(pack_trits(unpack_trits(every, 5 * 243)), every)


def test_layout_is_little_endian_within_a_byte() -> None:
    assert pack_bits(torch.tensor([1, 0, 3, 2]), 2).tolist() == [1 + 0 * 4 + 3 * 16 + 2 * 64]
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1]), 1).tolist() == [1 + 4 + 8 + 128, 1]
    assert pack_bits(torch.tensor([15, 1, 7]), 4).tolist() == [15 + 16, 7]
    assert pack_trits(torch.tensor([2, 1, 0, 0, 1, 2])).tolist() == [2 + 3 + 81, 2]


def test_accepts_any_integer_or_bool_dtype() -> None:
    for dtype in (torch.int64, torch.int32, torch.int8, torch.bool):
        codes = torch.tensor([1, 0, 1], dtype=dtype)
        assert unpack_bits(pack_bits(codes, 1), 1, 3).tolist() == [1, 0, 1]


def test_packed_codes_bundle_the_length() -> None:
    codes = _codes((4, 13), 4)
    assert torch.equal(PackedCodes.of_bits(codes, 2).unpack(), codes)
    trits = _codes((4, 13), 3)
    packed = PackedCodes.of_trits(trits)
    assert packed.length == 13 and packed.bits is None
    assert torch.equal(packed.unpack(), trits)


@pytest.mark.parametrize("bits", [1, 2, None])
def test_per_head_packing_round_trips(bits: int | None) -> None:
    codes = _codes((3, 7, 5), 3 if bits is None else 1 << bits)
    packed = pack_per_head(codes, bits)
    assert packed.shape[0] == 3
    assert torch.equal(unpack_per_head(packed, bits, (3, 7, 5)), codes)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pack_bits(torch.tensor([4]), 2), r"must lie in \[0, 3\]"),
        (lambda: pack_bits(torch.tensor([-1]), 2), r"must lie in \[0, 3\]"),
        (lambda: pack_bits(torch.tensor([1]), 3), "cannot pack 3-bit codes"),
        (lambda: pack_bits(torch.tensor([0.5]), 2), "integer tensor"),
        (lambda: pack_trits(torch.tensor([3])), r"must lie in \[0, 2\]"),
        (lambda: unpack_bits(torch.zeros(2, dtype=torch.uint8), 2, 9), "cannot hold exactly 9"),
        (lambda: unpack_trits(torch.zeros(2, dtype=torch.int32), 5), "must be uint8"),
    ],
)
def test_bad_input_is_a_one_line_error(call, match: str) -> None:
    with pytest.raises(QuantError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, None])
def test_tensors_with_no_rows_pack_and_unpack(bits):
    codes = torch.zeros(0, 7, dtype=torch.uint8)
    if bits is None:
        packed = pack_trits(codes)
        back = unpack_trits(packed, 7)
    else:
        packed = pack_bits(codes, bits)
        back = unpack_bits(packed, bits, 7)
    assert packed.shape == (0, packed_length(7, bits)) and back.shape == (0, 7)
