"""vidkv's compact layout (blocks under group_size tokens): bits, accuracy, frozen per-layer state."""

from __future__ import annotations

import hashlib

import pytest
import torch
from _blocks import random_block

from streamvlm.memory.policy import get_policy
from streamvlm.memory.quantized import QuantizedCodec
from streamvlm.memory.tiered import TieredStore
from streamvlm.memory.tiers import DeviceTier, HostTier
from streamvlm.quant import QuantError, attention_error, get_kv_codec, relative_error
from streamvlm.quant import vidkv_compact as compact
from streamvlm.quant.packing import unpack_per_head
from streamvlm.quant.synthetic import synthetic_kv

GEOMETRIES = [(2, 32), (4, 128)]  # the tiny model's [kv heads, head_dim], Qwen2.5-VL-7B's


def kv_bits(heads: int, tokens: int, head_dim: int, seed: int = 0) -> tuple[float, float, float]:
    """(key, value, both) bits per element of one fresh codec's first block of that shape."""
    _, k, v = synthetic_kv(heads, tokens, head_dim, seed=seed)
    codec = get_kv_codec("vidkv")
    ek, ev = codec.encode(k, "key"), codec.encode(v, "value")
    return ek.bits_per_element, ev.bits_per_element, (ek.stored_bits + ev.stored_bits) / (2 * ek.numel)


# ---------------------------------------------------------------------------------------
# bits


@pytest.mark.parametrize(("heads", "head_dim"), GEOMETRIES)
@pytest.mark.parametrize("tokens", range(1, 32))
def test_every_block_under_group_size_stores_at_most_2_1_bits(heads: int, head_dim: int, tokens: int) -> None:
    # measured worst: 2.052 at 12 tokens (head_dim 32), 1.979 (head_dim 128)
    assert kv_bits(heads, tokens, head_dim)[2] <= 2.06


@pytest.mark.parametrize(
    ("heads", "tokens", "head_dim", "key_bits", "value_bits"),
    [
        # keys: codes per token and head (n4 x 4 + n2 x 2 + m x 1 bits, each tier padded to a
        # byte over the tensor), a step byte + int8 zero per head and run of tokens (2 tokens
        # at head_dim 32, 1 at 128), one gain byte; values: trits (5 per byte), one gain byte
        (2, 1, 32, (8 + 64 + 32 + 2 * 16 + 8) / 64, (13 * 8 + 8) / 64),
        (2, 4, 32, (32 + 240 + 128 + 2 * 2 * 16 + 8) / 256, (52 * 8 + 8) / 256),
        (4, 1, 128, (64 + 480 + 256 + 4 * 16 + 8) / 512, (103 * 8 + 8) / 512),
        (4, 4, 128, (256 + 1920 + 1024 + 4 * 4 * 16 + 8) / 2048, (410 * 8 + 8) / 2048),
        # from 8 tokens values, from 12 keys, add a 4-bit offset per channel
        (2, 8, 32, (64 + 480 + 256 + 2 * 4 * 16 + 8) / 512, (64 * 4 + 103 * 8 + 8) / 512),
        (2, 16, 32, (64 * 4 + 128 + 960 + 512 + 2 * 8 * 16 + 8) / 1024, (64 * 4 + 205 * 8 + 8) / 1024),
    ],
)
def test_exact_compact_bits(heads, tokens, head_dim, key_bits, value_bits) -> None:
    assert kv_bits(heads, tokens, head_dim)[:2] == (key_bits, value_bits)


@pytest.mark.parametrize(("heads", "head_dim"), GEOMETRIES)
@pytest.mark.parametrize("tokens", [1, 4])
def test_a_pruned_block_stores_at_most_2_1_bits_as_the_tier_reports_it(heads, head_dim, tokens) -> None:
    """What ``session.stats().kv_bits_per_element`` reads (``TieredStore``), two layers, a
    16-token block first (the layer's state), then a pruned block of ``tokens`` alone."""
    full, pruned = random_block(0, 16, 2, heads, head_dim), random_block(1, tokens, 2, heads, head_dim)
    for block, budget in ((full, 2.1), (pruned, 2.1)):
        store = TieredStore(
            [DeviceTier(0), HostTier(1 << 24, QuantizedCodec("vidkv"))],
            get_policy("age"),
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        store.put(block)
        assert store.tier_of(block.id) == "host"
        # head_dim 32: 1.715 (16 tokens), 1.75 (4), 2.0 (1); head_dim 128: 1.65, 1.65, 1.66
        assert store.kv_bits_per_element()["host"] <= budget
        store.close()


def test_the_standard_layout_is_unchanged_from_32_tokens_on() -> None:
    """Blocks of >= group_size tokens are byte-identical to the layout before the compact one
    existed (digests taken from that code), so its fast paths and stored blocks stay valid."""
    digests = {
        (4, 64, 128): "038520e61c443379",
        (2, 32, 32): "63c7567820905ede",
        (2, 65, 32): "c666dc7b57d4fb90",
    }
    for shape, digest in digests.items():
        codec = get_kv_codec("vidkv")
        _, k, v = synthetic_kv(*shape, seed=3)
        h = hashlib.sha256()
        for enc in (codec.encode(k, "key"), codec.encode(v, "value"), codec.encode(k[:, :32] * 0.5, "key")):
            assert not compact.is_compact(enc.tensors)
            for name in sorted(enc.tensors):
                h.update(name.encode())
                h.update(enc.tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
        assert h.hexdigest()[:16] == digest


# ---------------------------------------------------------------------------------------
# accuracy


def errors_after_calibration(heads: int, head_dim: int, tokens: int, seeds: int = 3) -> dict[str, float]:
    """Mean errors of a ``tokens`` block coded after a 32-token first block of the same stream."""
    acc = torch.zeros(4, dtype=torch.float64)
    for seed in range(seeds):
        q, k, v = synthetic_kv(heads, 32 + tokens, head_dim, seed=seed)
        codec = get_kv_codec("vidkv")
        codec.encode(k[:, :32], "key"), codec.encode(v[:, :32], "value")
        k, v = k[:, 32:], v[:, 32:]
        kh, vh = codec.decode(codec.encode(k, "key")), codec.decode(codec.encode(v, "value"))
        both = attention_error(q, k, v, kh, vh)
        acc += torch.tensor(
            [relative_error(k, kh), relative_error(v, vh), both.output_rel_error, both.weights_tv],
            dtype=torch.float64,
        )
    return dict(zip(("key", "value", "attention", "tv"), (acc / seeds).tolist(), strict=True))


@pytest.mark.parametrize(
    ("heads", "head_dim", "tokens", "limits"),
    [
        # measured (3 seeds): standard layout at 32 tokens for comparison: attention 0.60 / 0.43
        (2, 32, 4, {"key": 0.32, "value": 0.46, "attention": 0.52}),  # 0.295, 0.443, 0.501
        (2, 32, 16, {"key": 0.30, "value": 0.45, "attention": 0.53}),  # 0.271, 0.431, 0.508
        (4, 128, 1, {"key": 0.20, "value": 0.46, "attention": 0.46}),  # 0.176, 0.442, 0.442
        (4, 128, 16, {"key": 0.20, "value": 0.45, "attention": 0.46}),  # 0.177, 0.431, 0.439
    ],
)
def test_small_blocks_are_coded_about_as_well_as_full_ones(heads, head_dim, tokens, limits) -> None:
    errors = errors_after_calibration(heads, head_dim, tokens)
    assert {name: errors[name] <= limit for name, limit in limits.items()} == dict.fromkeys(limits, True)


def test_channel_offsets_capture_blocks_that_sit_away_from_zero(monkeypatch) -> None:
    """A block whose channels sit at offsets far from their spread (the tiny model's keys and
    values: RoPE angle and scene shared by the block) is coded around them from 8/12 tokens on."""
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(2, 32, 32, generator=g) * 2
    offsets = torch.randn(2, 1, 32, generator=g) * 2
    block = offsets + 0.2 * torch.randn(2, 16, 32, generator=g)

    def error(kind: str) -> float:
        codec = get_kv_codec("vidkv")
        codec.encode(calib, kind)
        return relative_error(block, codec.decode(codec.encode(block, kind)))

    with_offsets = {kind: error(kind) for kind in ("key", "value")}  # measured 0.087, 0.083
    monkeypatch.setattr(compact, "OFFSET_MIN_TOKENS", {"key": 99, "value": 99})
    without = {kind: error(kind) for kind in ("key", "value")}  # measured 0.54, 0.44
    assert max(with_offsets.values()) < 0.1 and min(without.values()) > 0.4


def test_constant_and_zero_blocks_decode_exactly_enough() -> None:
    codec = get_kv_codec("vidkv")
    codec.encode(torch.randn(2, 32, 32), "key"), codec.encode(torch.randn(2, 32, 32), "value")
    for kind in ("key", "value"):
        zero = torch.zeros(2, 3, 32)
        assert torch.equal(codec.decode(codec.encode(zero, kind)), zero)
        assert torch.isfinite(codec.decode(codec.encode(torch.full((2, 9, 32), 0.5), kind))).all()


# ---------------------------------------------------------------------------------------
# per-layer state


def test_a_layer_whose_first_block_is_one_token_ranks_tiers_by_peak() -> None:
    """Over one token every channel's range is 0; its magnitude still finds the outliers."""
    _, k, _ = synthetic_kv(2, 1, 128, outliers=4, outlier_scale=20.0, seed=1)
    codec = get_kv_codec("vidkv")
    codec.encode(k, "key")
    tiers = unpack_per_head(codec.shared_state(0)["tiers"], 2, (2, 128))
    peaks = k.abs().amax(dim=1).argsort(dim=-1, descending=True)[:, :4]
    assert torch.equal(tiers.gather(1, peaks), torch.full((2, 4), 2, dtype=torch.uint8))


def test_state_is_frozen_by_the_first_block_whatever_comes_next() -> None:
    codec = get_kv_codec("vidkv")
    _, k, v = synthetic_kv(2, 80, 32, seed=2)
    first = [codec.encode(k[:, :3], "key"), codec.encode(v[:, :3], "value")]
    state = {name: t.clone() for name, t in codec.shared_state(0).items()}
    assert set(state) == {"tiers", "kprof", "kprof_max", "vprof", "vprof_max"}
    decoded = [codec.decode(e) for e in first]
    for kind, x in (("key", k[:, 3:80]), ("value", v[:, 3:80]), ("key", 5 * k[:, :20])):
        codec.encode(x, kind)
    after = codec.shared_state(0)
    assert all(torch.equal(after[name], t) for name, t in state.items())
    assert all(torch.equal(codec.decode(e), d) for e, d in zip(first, decoded, strict=True))


def test_state_round_trips_through_the_block_codec_and_decodes_bit_for_bit() -> None:
    """QuantizedCodec's generic shared_state / load_shared_state carries the profiles too."""
    blocks = [random_block(i, tokens, 2, 2, 32) for i, tokens in enumerate((4, 16, 1, 40))]
    writer = QuantizedCodec("vidkv")
    stored = [writer.encode(b) for b in blocks]
    state = writer.shared_state()
    assert {name.split(".", 1)[1] for name in state} == {"tiers", "kprof", "kprof_max", "vprof", "vprof_max"}
    reader = QuantizedCodec("vidkv")
    reader.load_shared_state({name: t.clone() for name, t in state.items()})
    for s in stored:
        for (k, v), (k2, v2) in zip(
            writer.decode(s, "cpu", torch.float32).layers,
            reader.decode(s, "cpu", torch.float32).layers,
            strict=True,
        ):
            assert torch.equal(k, k2) and torch.equal(v, v2)
    assert reader.shared_state().keys() == state.keys()


def test_decoding_a_compact_block_needs_the_profile() -> None:
    writer = get_kv_codec("vidkv")
    _, k, v = synthetic_kv(2, 4, 32)
    ek, ev = writer.encode(k, "key", layer=1), writer.encode(v, "value", layer=1)
    reader = get_kv_codec("vidkv")
    with pytest.raises(QuantError, match="no value channel profile for layer 1"):
        reader.decode(ev)
    reader.load_shared_state(1, {"tiers": writer.shared_state(1)["tiers"]})
    with pytest.raises(
        QuantError, match="no key channel profile for layer 1; load it with load_shared_state"
    ):
        reader.decode(ek)
    with pytest.raises(QuantError, match="the pairs kprof/kprof_max"):
        reader.load_shared_state(1, {"kprof": writer.shared_state(1)["kprof"]})
    reader.load_shared_state(1, writer.shared_state(1))
    assert torch.equal(reader.decode(ek), writer.decode(ek)) and torch.equal(
        reader.decode(ev), writer.decode(ev)
    )


def test_state_saved_before_profiles_existed_still_serves() -> None:
    """A stream restored from ``tiers`` alone keeps its tiers, decodes its old blocks (standard
    layout at any size, read by their names) and calibrates the profiles on its next block."""
    _, k, v = synthetic_kv(2, 40, 32, seed=4)
    writer = get_kv_codec("vidkv")
    writer.encode(k[:, :32], "key")
    tiers = writer._tiers[0]
    channels = compact.tier_channels(tiers)
    old_small = {
        "key": writer._encode_keys(k[:, 32:36], channels),
        "value": writer._encode_values(v[:, 32:36]),
    }
    reader = get_kv_codec("vidkv")
    reader.load_shared_state(0, {"tiers": writer.shared_state(0)["tiers"]})
    for kind, x in (("key", k[:, 32:36]), ("value", v[:, 32:36])):
        enc = type(writer.encode(x, kind))("vidkv", kind, tuple(x.shape), old_small[kind], 0)
        assert relative_error(x, reader.decode(enc)) < 0.5
    enc = reader.encode(k[:, 36:40], "key")
    assert compact.is_compact(enc.tensors) and torch.equal(
        reader.shared_state(0)["tiers"], writer.shared_state(0)["tiers"]
    )
    assert "kprof" in reader.shared_state(0)


def test_gains_round_up_only_when_asked() -> None:
    g = torch.tensor([5e-3, 0.3, 1.0, 7.7, 100.0])  # the range: 2 ** (+-127 / 16), 0.004 to 245
    up = compact.decode_gain(compact.encode_gain(g, round_up=True))
    near = compact.decode_gain(compact.encode_gain(g, round_up=False))
    assert bool((up >= g).all()) and float((up / g).max()) < 2 ** (1 / 16) + 1e-6
    assert float(((near / g).log2().abs() * 16).max()) <= 0.5 + 1e-4
    tiny = torch.tensor([1e-6])  # below the range: the smallest gain, never 0 (a step never clips)
    assert compact.decode_gain(compact.encode_gain(tiny, round_up=True)).item() == pytest.approx(
        2 ** (-127 / 16)
    )
    assert compact.decode_gain(compact.encode_gain(torch.zeros(1), round_up=True)).item() == 0.0


def test_compact_encoding_is_deterministic() -> None:
    _, k, v = synthetic_kv(2, 7, 32, seed=7)
    for kind, x in (("key", k), ("value", v)):
        a, b = get_kv_codec("vidkv").encode(x, kind), get_kv_codec("vidkv").encode(x.clone(), kind)
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)
