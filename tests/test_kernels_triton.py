"""Triton kernels against their PyTorch references: same bytes, same floats bit for bit.

On a machine with CUDA the kernels run compiled on the GPU; without one they run in Triton's
interpreter on the CPU. ``TRITON_INTERPRET=1`` has to be set before triton is first imported
(``@triton.jit`` picks compiled or interpreted when a function is defined, triton's own
library included), so this module sets it at import, and only where no GPU exists: there the
interpreter is the only way any triton kernel can run, so later modules lose nothing. If
triton was imported earlier without it, the tests here skip and say so.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from streamvlm import kernels  # noqa: E402
from streamvlm.kernels import reference  # noqa: E402
from streamvlm.quant import QuantError, get_kv_codec  # noqa: E402
from streamvlm.quant.packing import unpack_per_head  # noqa: E402
from streamvlm.quant.synthetic import synthetic_kv  # noqa: E402

if DEVICE.type == "cpu" and type(triton.language.zeros).__name__ != "InterpretedFunction":
    pytest.skip(
        "triton was imported before TRITON_INTERPRET=1 could be set; run this file on its own "
        "or with TRITON_INTERPRET=1",
        allow_module_level=True,
    )


def _codes(shape: tuple[int, ...], limit: int, seed: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, limit, shape, generator=g).to(DEVICE, dtype)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[want.element_size()]
    assert torch.equal(got.view(ints), want.view(ints)), (got - want).abs().max()


# packing ------------------------------------------------------------------------------

# lengths around byte boundaries of every width, and rows longer than one program's block
PACK_SHAPES = [(1,), (7,), (2, 9), (3, 33), (2, 3, 1001), (2, 5003)]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", PACK_SHAPES)
def test_pack_bits_gives_the_reference_bytes(bits: int, shape: tuple[int, ...]) -> None:
    codes = _codes(shape, 1 << bits, seed=shape[-1] + bits)
    packed = kernels.pack_bits(codes, bits, backend="triton")
    assert_same_bits(packed, reference.pack_bits(codes, bits))
    assert_same_bits(kernels.unpack_bits(packed, bits, shape[-1], backend="triton"), codes)


@pytest.mark.parametrize("shape", PACK_SHAPES)
def test_pack_trits_gives_the_reference_bytes(shape: tuple[int, ...]) -> None:
    codes = _codes(shape, 3, seed=shape[-1])
    packed = kernels.pack_trits(codes, backend="triton")
    assert_same_bits(packed, reference.pack_trits(codes))
    assert_same_bits(kernels.unpack_trits(packed, shape[-1], backend="triton"), codes)


def test_every_trit_byte_unpacks_like_the_reference() -> None:
    every = torch.arange(243, dtype=torch.uint8, device=DEVICE)
    got = kernels.unpack_trits(every, 5 * 243, backend="triton")
    assert_same_bits(got, reference.unpack_trits(every, 5 * 243))
    assert_same_bits(kernels.pack_trits(got, backend="triton"), every)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.bool])
def test_pack_reads_any_integer_dtype(dtype: torch.dtype) -> None:
    codes = _codes((3, 37), 2, seed=1, dtype=dtype)
    assert_same_bits(kernels.pack_bits(codes, 1, backend="triton"), reference.pack_bits(codes, 1))
    if dtype != torch.bool:
        codes = _codes((3, 37), 3, seed=2, dtype=dtype)
        assert_same_bits(kernels.pack_trits(codes, backend="triton"), reference.pack_trits(codes))


def test_empty_rows_pack_like_the_reference() -> None:
    for shape in ((3, 0), (0, 5)):
        codes = torch.zeros(shape, dtype=torch.uint8, device=DEVICE)
        assert_same_bits(kernels.pack_bits(codes, 2, backend="triton"), reference.pack_bits(codes, 2))
        assert_same_bits(kernels.pack_trits(codes, backend="triton"), reference.pack_trits(codes))


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.pack_bits(torch.tensor([0, 4], device=DEVICE), 2),  # code out of range
        lambda m: m.pack_bits(torch.tensor([0.0, 1.0], device=DEVICE), 2),  # float codes
        lambda m: m.pack_bits(torch.tensor([0, 1], device=DEVICE), 3),  # unsupported width
        lambda m: m.pack_trits(torch.tensor([0, 3], device=DEVICE)),
        lambda m: m.unpack_bits(
            torch.zeros(2, dtype=torch.uint8, device=DEVICE), 2, 9
        ),  # 9 codes need 3 bytes
        lambda m: m.unpack_trits(torch.zeros(2, dtype=torch.int8, device=DEVICE), 10),  # not uint8
    ],
)
def test_bad_input_fails_like_the_reference(call) -> None:
    with pytest.raises(QuantError) as want:
        call(reference)
    with pytest.raises(QuantError) as got:
        call(_TritonPacking)
    assert str(got.value) == str(want.value)


class _TritonPacking:
    """The dispatch functions with the Triton backend forced, shaped like ``reference``."""

    pack_bits = staticmethod(lambda *a: kernels.pack_bits(*a, backend="triton"))
    unpack_bits = staticmethod(lambda *a: kernels.unpack_bits(*a, backend="triton"))
    pack_trits = staticmethod(lambda *a: kernels.pack_trits(*a, backend="triton"))
    unpack_trits = staticmethod(lambda *a: kernels.unpack_trits(*a, backend="triton"))


# decoding -----------------------------------------------------------------------------


def _kv(kind: str, heads: int, tokens: int, head_dim: int) -> torch.Tensor:
    # synthetic KV has 4x20 outlier key channels per head, like real post-RoPE keys
    _, k, v = synthetic_kv(heads, tokens, head_dim, seed=tokens * head_dim + heads)
    return k if kind == "key" else v


def _check_decode(codec, x: torch.Tensor, kind: str, dtype: torch.dtype = torch.float32) -> None:
    enc = codec.encode(x, kind, layer=1)
    got = kernels.decode(enc, codec, DEVICE, dtype, backend="triton")
    assert_same_bits(got, reference.decode(enc, codec, DEVICE, dtype))


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("tokens", [1, 16, 33, 256])
@pytest.mark.parametrize("kind", ["key", "value"])
@pytest.mark.parametrize("name", ["kivi2", "vidkv"])
def test_decode_equals_the_reference(name: str, kind: str, tokens: int, head_dim: int, heads: int) -> None:
    _check_decode(get_kv_codec(name), _kv(kind, heads, tokens, head_dim), kind)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["kivi2", "vidkv"])
def test_decode_rounds_to_the_output_dtype_like_the_reference(name: str, dtype: torch.dtype) -> None:
    codec = get_kv_codec(name)
    for kind in ("key", "value"):
        _check_decode(codec, _kv(kind, 2, 40, 64), kind, dtype)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("kivi2", {"bits": 4}),
        ("kivi2", {"bits": 8, "group_size": 16}),
        ("vidkv", {"key_4bit_fraction": 0.0}),  # no 4-bit tier tensors at all
        ("vidkv", {"key_2bit_fraction": 0.0}),  # a 4-bit tier, no 2-bit tier (head_dim 32)
        ("vidkv", {"group_size": 16, "salient_fraction": 0.5}),
        ("vidkv", {"salient_fraction": 0.0}),  # no salient tokens: empty tensors
    ],
)
def test_decode_equals_the_reference_for_other_options(name: str, options: dict) -> None:
    codec = get_kv_codec(name, **options)
    for kind in ("key", "value"):
        _check_decode(codec, _kv(kind, 2, 70, 32), kind)


def test_vidkv_keys_decode_with_restored_layer_state() -> None:
    # a restarted stream: a fresh codec with the layer's tiers loaded, not recomputed
    writer = get_kv_codec("vidkv")
    enc = writer.encode(_kv("key", 2, 48, 64), "key", layer=3)
    reader = get_kv_codec("vidkv")
    reader.load_shared_state(3, writer.shared_state(3))
    got = kernels.decode(enc, reader, DEVICE, backend="triton")
    assert_same_bits(got, writer.decode(enc, DEVICE))
    with pytest.raises(QuantError, match="no key channel tiers for layer 3"):
        kernels.decode(enc, get_kv_codec("vidkv"), DEVICE, backend="triton")


@pytest.mark.parametrize("name", ["kivi2", "vidkv"])
def test_stored_payloads_repack_to_the_same_bytes(name: str) -> None:
    """Every packed tensor a codec stores, unpacked and packed again by the kernels."""
    codec = get_kv_codec(name)
    heads, tokens, head_dim = 4, 33, 32
    for kind in ("key", "value"):
        enc = codec.encode(_kv(kind, heads, tokens, head_dim), kind)
        widths = {"codes": 2, "k4.codes": 4, "k2.codes": 2, "k1.signs": 1, "salient": 1, "sal.codes": 2}
        widths["tern.codes"] = None
        for tensor_name, bits in widths.items():
            if tensor_name not in enc.tensors:
                continue
            packed = enc.tensors[tensor_name].to(DEVICE)
            length = _packed_codes_per_head(enc, tensor_name)
            if bits is None:
                codes = kernels.unpack_trits(packed, length, backend="triton")
                repacked = kernels.pack_trits(codes, backend="triton")
            else:
                codes = kernels.unpack_bits(packed, bits, length, backend="triton")
                repacked = kernels.pack_bits(codes, bits, backend="triton")
            assert_same_bits(codes, unpack_per_head(packed, bits, (heads, length)))
            assert_same_bits(repacked, packed)


def _packed_codes_per_head(enc, tensor_name: str) -> int:
    # codes per head of each stored tensor, from the shapes of its metadata
    _, tokens, head_dim = enc.shape
    t = enc.tensors
    if tensor_name == "codes":
        return tokens * head_dim
    if tensor_name == "salient":
        return tokens
    if tensor_name == "sal.codes":
        return t["sal.scale"].shape[1] * head_dim
    if tensor_name == "tern.codes":
        return (tokens - t["sal.scale"].shape[1]) * head_dim
    prefix = tensor_name.split(".")[0]  # k4, k2, k1: channels in the tier x tokens
    return t[f"{prefix}.scale"].shape[1] * tokens
