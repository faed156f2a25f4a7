"""The numba CPU kernels (``kernels/kivi_cpu.py``, ``kernels/vidkv_cpu.py``,
``kernels/vidkv_compact_cpu.py``) against the reference,
bit for bit: the same packed bytes from encode, the same floats from decode.

Needs numba (``pip install 'streamvlm[cpu]'``); skipped without it. The first run compiles the
kernels (about a minute on 2 cores); numba caches them next to the sources afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _blocks import random_block

pytest.importorskip("numba")

from streamvlm import kernels  # noqa: E402
from streamvlm.errors import ConfigError  # noqa: E402
from streamvlm.kernels import backend  # noqa: E402
from streamvlm.memory.quantized import QuantizedCodec  # noqa: E402
from streamvlm.quant import get_kv_codec  # noqa: E402
from streamvlm.quant.base import QuantError  # noqa: E402
from streamvlm.quant.groups import group_sum  # noqa: E402
from streamvlm.quant.synthetic import synthetic_kv  # noqa: E402

# (heads, tokens, head_dim): every token count of the issue (32, 33, 65, 1024) and every
# head_dim (32, 64, 128) and head count (1, 2, 4) at least once, with their awkward mixes
SHAPES = [(1, 32, 32), (2, 33, 64), (4, 65, 128), (1, 65, 32), (4, 33, 128), (2, 1024, 64), (4, 1024, 128)]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _same_bytes(fast, ref) -> None:
    assert list(fast.tensors) == list(ref.tensors)
    assert fast.shape == ref.shape and fast.codec == ref.codec and fast.kind == ref.kind
    for name, t in ref.tensors.items():
        got = fast.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got.view(torch.uint8), t.view(torch.uint8)), name


def _decodes_alike(enc, fast_codec, ref_codec) -> None:
    for dtype in DTYPES:
        got = kernels.decode(enc, fast_codec, dtype=dtype, backend="cpu")
        assert got.dtype == dtype
        assert torch.equal(got, ref_codec.decode(enc, dtype=dtype)), dtype


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bits", [2, 4])
def test_kivi_matches_the_reference_bit_for_bit(shape, bits) -> None:
    _, k, v = synthetic_kv(*shape, queries=1, outliers=2, seed=shape[1])
    codec = get_kv_codec("kivi2", bits=bits)
    for kind, x in (("key", k), ("value", v)):
        ref = codec.encode(x, kind)
        fast = kernels.encode(codec, x, kind, backend="cpu")
        _same_bytes(fast, ref)
        _decodes_alike(ref, codec, codec)


def test_kivi8_and_a_short_last_group() -> None:
    _, k, v = synthetic_kv(2, 45, 48, queries=1, seed=3)  # 45 tokens, 48 channels: partial groups
    for bits in (2, 8):
        codec = get_kv_codec("kivi2", bits=bits)
        for kind, x in (("key", k), ("value", v)):
            ref = codec.encode(x, kind)
            _same_bytes(kernels.encode(codec, x, kind, backend="cpu"), ref)
            _decodes_alike(ref, codec, codec)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_vidkv_matches_the_reference_bit_for_bit_with_frozen_tiers(shape) -> None:
    """Two blocks per layer: the first calibrates (freezes) the key tiers, the second is coded
    with them, by each path with its own codec object."""
    ref_codec, fast_codec = get_kv_codec("vidkv"), get_kv_codec("vidkv")
    for block in range(2):
        _, k, v = synthetic_kv(*shape, queries=1, outliers=2, seed=10 * block + shape[1])
        for kind, x in (("key", k * (1 + block)), ("value", v)):
            ref = ref_codec.encode(x, kind, layer=3)
            fast = kernels.encode(fast_codec, x, kind, layer=3, backend="cpu")
            _same_bytes(fast, ref)
            _decodes_alike(ref, fast_codec, ref_codec)
    assert torch.equal(fast_codec.shared_state(3)["tiers"], ref_codec.shared_state(3)["tiers"])


@pytest.mark.parametrize(
    "options",
    [
        {"key_4bit_fraction": 0.0, "ternary_threshold": 0.7},
        {"salient_fraction": 0.0},
        {"group_size": 16},
        {"key_2bit_fraction": 0.0},  # no uniform key tier at all: every channel in the sign tier
        {"key_2bit_fraction": 1 / 16, "key_4bit_fraction": 1 / 16},  # a 4-bit tier and no 2-bit one
    ],
)
def test_vidkv_options_match_the_reference(options) -> None:
    _, k, v = synthetic_kv(2, 70, 64, queries=1, outliers=2, seed=1)
    ref_codec, fast_codec = get_kv_codec("vidkv", **options), get_kv_codec("vidkv", **options)
    for kind, x in (("key", k), ("value", v)):
        ref = ref_codec.encode(x, kind)
        _same_bytes(kernels.encode(fast_codec, x, kind, backend="cpu"), ref)
        _decodes_alike(ref, fast_codec, ref_codec)


@pytest.mark.parametrize("head_dim", [80, 96, 6])
def test_vidkv_value_energies_fold_odd_halves_like_the_reference(head_dim) -> None:
    """Channel counts whose halving goes odd (80 -> 5, 96 -> 3, 6 -> 3): the energies that pick
    the salient tokens carry the odd element as the reference does, so the same tokens win."""
    from streamvlm.kernels.vidkv_cpu import _token_energy
    from streamvlm.quant.selection import token_energy

    _, _, v = synthetic_kv(2, 64, head_dim, queries=1, seed=head_dim)
    energy = np.empty(64, np.float32)
    top = _token_energy(v[1].numpy(), energy)
    assert torch.equal(torch.from_numpy(energy), token_energy(v[1]))  # the same bits, not just close
    assert top == energy.max()
    codec = get_kv_codec("vidkv", salient_fraction=0.25)
    ref = codec.encode(v, "value")
    _same_bytes(kernels.encode(codec, v, "value", backend="cpu"), ref)


def test_vidkv_salient_ties_go_to_the_earlier_token_like_the_reference() -> None:
    """The kernel picks salient value tokens by partition, the reference by stable sort: equal
    norms (tokens that repeat a few vectors, and signs flipped) must land on the same tokens."""
    base = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    v = base.repeat(1, 14, 1)[:, :70] * torch.tensor([1.0, -1.0]).repeat(35)[:, None]
    codec = get_kv_codec("vidkv", salient_fraction=0.1)  # 7 of 70 tokens among 5 distinct norms
    ref = codec.encode(v, "value")
    _same_bytes(kernels.encode(codec, v, "value", backend="cpu"), ref)
    _decodes_alike(ref, codec, codec)


def test_half_precision_inputs_encode_alike() -> None:
    _, k, v = synthetic_kv(2, 64, 64, queries=1, seed=2)
    for dtype in (torch.float16, torch.bfloat16):
        for name in ("kivi2", "vidkv"):
            ref_codec, fast_codec = get_kv_codec(name), get_kv_codec(name)
            for kind, x in (("key", k.to(dtype)), ("value", v.to(dtype))):
                _same_bytes(kernels.encode(fast_codec, x, kind, backend="cpu"), ref_codec.encode(x, kind))


FP16_NEXT = float(torch.nextafter(torch.tensor(65504.0), torch.tensor(1e9)))  # just past max_abs


@pytest.mark.parametrize("name", ["kivi2", "vidkv"])
@pytest.mark.parametrize("kind", ["key", "value"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), FP16_NEXT, -70000.0])
@pytest.mark.parametrize("calibrated", [True, False])
@pytest.mark.parametrize("tokens", [64, 12])  # vidkv: the standard layout, the compact one
def test_bad_values_get_the_reference_error_and_change_nothing(name, kind, bad, calibrated, tokens) -> None:
    """vidkv's kernels check values from what they compute anyway (the token energies, the key
    kernel's own peak |x|) instead of a pass of their own: the same error as the reference's,
    also in the sign tier's channels and on a layer's first block, whose state (tiers,
    profiles) stays unfrozen."""
    _, k, v = synthetic_kv(2, tokens, 64, queries=1, seed=5)
    ref_codec, fast_codec = get_kv_codec(name), get_kv_codec(name)
    x = (k if kind == "key" else v).clone()
    if calibrated:  # the layer's state frozen by a good block first
        for codec in (ref_codec, fast_codec):
            kernels.encode(codec, x, kind, backend="cpu")
    before = {field: t.clone() for field, t in fast_codec.shared_state(0).items()}
    for token, channel in ((0, 0), (tokens - 1, 17), (tokens * 5 // 8, 63)):  # first, last, middle token
        x_bad = x.clone()
        x_bad[1, token, channel] = bad
        with pytest.raises(QuantError) as ref_error:
            ref_codec.encode(x_bad, kind)
        with pytest.raises(QuantError) as fast_error:
            kernels.encode(fast_codec, x_bad, kind, backend="cpu")
        assert str(fast_error.value) == str(ref_error.value)
    after = fast_codec.shared_state(0)
    assert after.keys() == before.keys() and all(torch.equal(after[f], t) for f, t in before.items())


def test_values_near_the_limit_encode_like_the_reference() -> None:
    """Every |x| at max_abs (value norms far beyond it: the full check decides) is accepted,
    on every channel of keys and values alike, with the reference's bytes."""
    x = torch.full((2, 40, 64), 65504.0)
    x[:, ::2] *= -1
    x[0, :, 5] = torch.linspace(-65504.0, 65504.0, 40)
    for kind in ("key", "value"):
        ref_codec, fast_codec = get_kv_codec("vidkv"), get_kv_codec("vidkv")
        _same_bytes(kernels.encode(fast_codec, x, kind, backend="cpu"), ref_codec.encode(x, kind))


@pytest.mark.parametrize("name", ["kivi2", "vidkv"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_into_a_strided_slice_leaves_its_neighbours_alone(name, dtype) -> None:
    _, k, _ = synthetic_kv(2, 40, 32, queries=1, seed=4)
    codec = get_kv_codec(name)
    enc = kernels.encode(codec, k, "key")
    cache = torch.full((2, 100, 32), 7.0, dtype=dtype)  # a larger cache: the block goes at 30..70
    target = cache[:, 30:70]
    assert not target.is_contiguous()
    returned = kernels.decode(enc, codec, out=target, backend="cpu")
    assert returned.data_ptr() == target.data_ptr()
    assert torch.equal(cache[:, 30:70], codec.decode(enc, dtype=dtype))
    assert (cache[:, :30] == 7).all() and (cache[:, 70:] == 7).all()


def test_out_must_match_the_block() -> None:
    codec = get_kv_codec("kivi2")
    enc = kernels.encode(codec, torch.randn(2, 40, 32), "key")
    with pytest.raises(QuantError, match=r"out= has shape \(2, 39, 32\)"):
        kernels.decode(enc, codec, out=torch.empty(2, 39, 32))
    # a dtype the kernels do not write goes through float32, still exact
    out = torch.empty(2, 40, 32, dtype=torch.float64)
    kernels.decode(enc, codec, out=out, backend="cpu")
    assert torch.equal(out, codec.decode(enc, dtype=torch.float64))


def test_out_works_on_every_path() -> None:
    codec = get_kv_codec("int8")  # no kernel: the reference, then a copy into out
    enc = codec.encode(torch.randn(1, 8, 16), "value")
    out = torch.zeros(1, 20, 16)[:, 4:12]
    kernels.decode(enc, codec, out=out, backend="cpu")
    assert torch.equal(out, codec.decode(enc))


def test_block_codec_decodes_each_layer_into_the_cache(monkeypatch) -> None:
    monkeypatch.setenv(backend.BACKEND_ENV, "cpu")
    block = random_block(0, 48, layers=2, heads=2, dim=32)
    codec, reference = QuantizedCodec("vidkv"), QuantizedCodec("vidkv")
    stored = codec.encode(block)
    # the reference block codec, run by the reference path
    monkeypatch.setenv(backend.BACKEND_ENV, "reference")
    assert all(torch.equal(t, reference.encode(block).tensors[n]) for n, t in stored.tensors.items())
    expected = reference.decode_layers(stored.tensors, stored.meta, "cpu", torch.float16)
    monkeypatch.setenv(backend.BACKEND_ENV, "cpu")
    caches = [
        (torch.zeros(2, 100, 32, dtype=torch.float16), torch.zeros(2, 100, 32, dtype=torch.float16))
        for _ in block.layers
    ]
    out = [(ck[:, 10:58], cv[:, 10:58]) for ck, cv in caches]
    decoded = codec.decode_layers(stored.tensors, stored.meta, "cpu", torch.float16, out=out)
    for (dk, dv), (ek, ev), (ck, cv) in zip(decoded, expected, caches, strict=True):
        assert torch.equal(dk, ek) and torch.equal(dv, ev)
        for cache, want in ((ck, ek), (cv, ev)):
            assert torch.equal(cache[:, 10:58], want)
            assert (cache[:, :10] == 0).all() and (cache[:, 58:] == 0).all()
    with pytest.raises(QuantError, match="out= has 1 layers"):
        codec.decode_layers(stored.tensors, stored.meta, "cpu", torch.float16, out=out[:1])


@pytest.mark.parametrize(
    ("env", "device", "numba", "expected"),
    [
        (None, "cpu", True, "cpu"),
        ("auto", "cpu", False, "reference"),
        ("reference", "cpu", True, "reference"),
        ("cpu", "cpu", True, "cpu"),
        ("cpu", "cuda", True, "reference"),
        ("auto", "meta", True, "reference"),
    ],
)
def test_backend_selection(monkeypatch, env, device, numba, expected) -> None:
    monkeypatch.setattr(backend, "cpu_kernels_available", lambda: numba)
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    if env is None:
        monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    else:
        monkeypatch.setenv(backend.BACKEND_ENV, env)
    assert backend.choose(device) == expected
    assert not backend.use_triton(device)


def test_forced_cpu_backend_without_numba_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setattr(backend, "cpu_kernels_available", lambda: False)
    with pytest.raises(ConfigError, match=r"numba does not import; pip install 'streamvlm\[cpu\]'"):
        backend.choose("cpu", backend="cpu")


def test_log8_lookup_gives_the_reference_codes() -> None:
    """The kernels' log8 codes come from a bucket lookup (``cpu_common.log8_lookup``): it must
    count the bounds >= the ratio exactly like the reference's searchsorted, at every bound
    (a few float32 steps either side) and across the whole float32 range."""
    import numpy as np

    from streamvlm.kernels.cpu_common import LOG8_SHIFT, log8_lookup
    from streamvlm.quant import scales

    for round_up in (False, True):
        bounds = scales.code_bounds(round_up).numpy()
        codes, inside = log8_lookup(bounds)
        near = bounds.astype(np.float32).view(np.uint32)[:, None] + np.arange(-3, 4, dtype=np.int64)[None]
        spread = np.random.default_rng(0).integers(1, 0x7F800000, 200_000)
        ratios = np.concatenate([near.ravel(), spread]).astype(np.uint32)
        r = ratios.view(np.float32).astype(np.float64)
        bucket = ratios >> LOG8_SHIFT
        got = codes[bucket] + (inside[bucket] >= r)
        assert np.array_equal(got, len(bounds) - np.searchsorted(bounds, r)), round_up


def test_group_sums_run_in_one_fixed_order() -> None:
    # the reference's sums (lowbit, groups) are sequential float64 sums rounded once, which
    # the kernels reproduce; torch.sum's order would not be
    x = torch.randn(300, 33) * torch.logspace(-4, 4, 33)
    expected = torch.tensor([sum(float(v) for v in row) for row in x.double()], dtype=torch.float32)
    assert torch.equal(group_sum(x), expected)


# ----- vidkv's compact layout (blocks of fewer tokens than group_size) ------------------------

# (heads, head_dim): the tiny model's, Qwen2.5-VL-7B's (4 KV heads of 128) and one in between
COMPACT_GEOMETRIES = [(2, 32), (4, 128), (1, 64)]
COMPACT_TOKENS = [1, 2, 4, 11, 12, 16, 31]  # offsets start at 8 (values) and 12 (keys) tokens


@pytest.mark.parametrize("geometry", COMPACT_GEOMETRIES, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("calibrated_on", ["full", "short"])
def test_vidkv_compact_blocks_match_the_reference_bit_for_bit(geometry, calibrated_on) -> None:
    """Every token count under a group, after the layer's state froze on a full block or on
    the short block itself (then the kernel path freezes it, like the reference)."""
    heads, head_dim = geometry
    for tokens in COMPACT_TOKENS:
        _, k, v = synthetic_kv(heads, 64, head_dim, queries=1, outliers=2, seed=tokens)
        ref_codec, fast_codec = get_kv_codec("vidkv"), get_kv_codec("vidkv")
        for kind, x in (("key", k), ("value", v)):
            if calibrated_on == "full":
                _same_bytes(
                    kernels.encode(fast_codec, x[:, :32], kind, backend="cpu"),
                    ref_codec.encode(x[:, :32], kind),
                )
            short = x[:, 40 : 40 + tokens] * 1.5  # away from the calibration sample
            ref = ref_codec.encode(short, kind)
            assert any(name.startswith("c.") for name in ref.tensors)
            _same_bytes(kernels.encode(fast_codec, short, kind, backend="cpu"), ref)
            _decodes_alike(ref, fast_codec, ref_codec)
        assert fast_codec.shared_state(0).keys() == ref_codec.shared_state(0).keys()
        for name, t in ref_codec.shared_state(0).items():
            assert torch.equal(fast_codec.shared_state(0)[name], t), name


@pytest.mark.parametrize(
    "options",
    [
        {"ternary_threshold": 0.7},  # not a float32: rounded like the reference rounds it
        {"key_4bit_fraction": 0.0},  # no 4-bit tier: no k4 field
        {"key_2bit_fraction": 0.4},  # an odd sign tier (19 of 32 channels): the direct transform
        {"group_size": 256},  # compact blocks of more than the kernels' 128 lanes
    ],
    ids=lambda o: next(iter(o)),
)
def test_vidkv_compact_options_match_the_reference(options) -> None:
    _, k, v = synthetic_kv(2, 200, 32, queries=1, seed=8)
    ref_codec, fast_codec = get_kv_codec("vidkv", **options), get_kv_codec("vidkv", **options)
    for tokens in (3, 16, 200):
        for kind, x in (("key", k[:, :tokens]), ("value", v[:, :tokens])):
            ref = ref_codec.encode(x, kind)
            if tokens < fast_codec.group_size:
                assert any(name.startswith("c.") for name in ref.tensors)
            _same_bytes(kernels.encode(fast_codec, x, kind, backend="cpu"), ref)
            _decodes_alike(ref, fast_codec, ref_codec)


def test_vidkv_compact_blocks_run_the_kernels(monkeypatch) -> None:
    """path_for sends compact blocks on a CPU to the CPU kernels (Triton has none for them)."""
    from streamvlm.quant import vidkv_compact

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran where the CPU kernel applies")

    codec = get_kv_codec("vidkv")
    _, k, v = synthetic_kv(2, 16, 32, queries=1, seed=6)
    encoded = {kind: codec.encode(x, kind) for kind, x in (("key", k), ("value", v))}
    for name in ("encode_keys", "encode_values", "decode_keys", "decode_values"):
        monkeypatch.setattr(vidkv_compact, name, refuse)
    assert kernels.path_for(codec, 16, "cpu", backend="cpu") == "cpu"
    assert kernels.path_for(codec, 16, "cpu", backend="reference") == "reference"
    for kind, x in (("key", k), ("value", v)):
        _same_bytes(kernels.encode(codec, x, kind, backend="cpu"), encoded[kind])
        kernels.decode(encoded[kind], codec, backend="cpu")


def test_vidkv_compact_decode_rejects_a_damaged_block() -> None:
    codec = get_kv_codec("vidkv")
    _, k, _ = synthetic_kv(2, 16, 32, queries=1, seed=2)
    enc = codec.encode(k, "key")
    short = dict(enc.tensors, **{"c.k1": enc.tensors["c.k1"][:, :-1]})
    with pytest.raises(QuantError, match=r"field 'c.k1' should be \(1, 64\), got \(1, 63\)"):
        kernels.decode(type(enc)(enc.codec, "key", enc.shape, short, 0), codec, backend="cpu")
    missing = {name: t for name, t in enc.tensors.items() if name != "c.step"}
    with pytest.raises(QuantError, match="'c.step' should be"):
        kernels.decode(type(enc)(enc.codec, "key", enc.shape, missing, 0), codec, backend="cpu")


def test_vidkv_small_blocks_in_the_old_standard_layout_decode_alike() -> None:
    """Blocks of under a group written before the compact layout existed are standard: the
    kernels read the layout from the field names, as the reference does."""
    writer = get_kv_codec("vidkv")
    _, k, v = synthetic_kv(2, 40, 32, queries=1, seed=9)
    writer.encode(k[:, :32], "key")
    writer.encode(v[:, :32], "value")
    channels = writer._tier_channels(0, torch.device("cpu"))
    old = {"key": writer._encode_keys(k[:, 32:36], channels), "value": writer._encode_values(v[:, 32:36])}
    for kind, x in (("key", k[:, 32:36]), ("value", v[:, 32:36])):
        enc = type(writer.encode(x, kind))("vidkv", kind, tuple(x.shape), old[kind], 0)
        _decodes_alike(enc, writer, writer)
