"""Fused attention over packed vidkv blocks against decode-then-attend (the PyTorch reference).

The fused kernels sum in another order than ``codec.decode`` + matmul + softmax and send
the sign tier through ``B^T q`` instead of ``irfft``, so they agree to float32 rounding, not
bit for bit. Tolerance: ``1e-5`` of the largest magnitude compared (the largest score, or
the largest decoded value for outputs, which are convex combinations of values), and
``1e-5`` relative. Measured: at most 4e-7 (scores) and 5e-7 (outputs) of it on the 18
shapes of the grid, 18x below.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` set at import,
as tests/test_kernels_triton.py does and for the same reasons); on a CUDA machine they run
compiled against the reference on the GPU. Shapes stay small: the interpreter runs every
tile in numpy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from streamvlm.kernels import attention  # noqa: E402
from streamvlm.quant import QuantError, get_kv_codec  # noqa: E402
from streamvlm.quant.synthetic import synthetic_kv  # noqa: E402

TOLERANCE = 1e-5


def _interpreter_or_gpu() -> None:
    triton = pytest.importorskip("triton")
    if DEVICE.type == "cpu" and type(triton.language.zeros).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run this file on its own")


@pytest.fixture
def fused() -> None:
    """Tests that run the Triton kernels: skip where they cannot run."""
    _interpreter_or_gpu()


def _block(codec, heads: int, tokens: int, head_dim: int, *, query_heads: int, queries: int, seed: int = 0):
    """(q, key block, value block, decoded values) of layer 0, q on DEVICE."""
    q, k, v = synthetic_kv(heads, tokens, head_dim, queries=queries, query_heads=query_heads, seed=seed)
    key, value = codec.encode(k, "key", layer=0), codec.encode(v, "value", layer=0)
    return q.to(DEVICE), key, value


def assert_close(got: torch.Tensor, want: torch.Tensor, magnitude: float) -> None:
    """Within float32 rounding of sums whose terms reach ``magnitude``."""
    assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device
    torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE * magnitude)


def _value_magnitude(codec, value) -> float:
    return float(codec.decode(value).abs().max())


# scores and outputs over one block ----------------------------------------------------------

SHAPES = [(h, t, d) for h in (2, 4) for t in (32, 64, 100) for d in (32, 64, 128)]


@pytest.mark.parametrize(("heads", "tokens", "head_dim"), SHAPES)
def test_scores_equal_the_reference(fused, heads: int, tokens: int, head_dim: int) -> None:
    codec = get_kv_codec("vidkv")
    group = 1 + tokens % 3  # query heads per KV head: 3, 2, 2 (GQA) over the token counts
    q, key, _ = _block(codec, heads, tokens, head_dim, query_heads=heads * group, queries=3, seed=tokens)
    got = attention.packed_scores(q, key, codec, backend="triton")
    want = attention.decode_then_score(q, key, codec, backend="reference")
    assert got.shape == (heads * group, 3, tokens)
    assert_close(got, want, float(want.abs().max()))


@pytest.mark.parametrize(("heads", "tokens", "head_dim"), SHAPES)
def test_attention_equals_the_reference(fused, heads: int, tokens: int, head_dim: int) -> None:
    codec = get_kv_codec("vidkv")
    group = 1 + tokens % 3
    q, key, value = _block(codec, heads, tokens, head_dim, query_heads=heads * group, queries=3, seed=tokens)
    # 32 tokens per program: several programs per block, each counting the salient tokens before it
    got = attention.packed_attention(q, [(key, value)], codec, backend="triton", tokens_per_program=32)
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    assert got.shape == q.shape
    assert_close(got, want, _value_magnitude(codec, value))


def test_one_program_per_block_gives_the_same_attention(fused) -> None:
    codec = get_kv_codec("vidkv")
    q, key, value = _block(codec, 2, 100, 64, query_heads=4, queries=2)
    whole = attention.packed_attention(q, [(key, value)], codec, backend="triton", tokens_per_program=1024)
    split = attention.packed_attention(q, [(key, value)], codec, backend="triton", tokens_per_program=32)
    assert_close(whole, split, _value_magnitude(codec, value))


def test_decode_step_at_qwen_7b_head_ratio(fused) -> None:
    # one new token, 7 query heads per KV head (28 / 4), head_dim 128
    codec = get_kv_codec("vidkv")
    q, key, value = _block(codec, 2, 72, 128, query_heads=14, queries=1)
    got = attention.packed_attention(q, [(key, value)], codec, backend="triton")
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    assert_close(got, want, _value_magnitude(codec, value))


def test_more_rows_than_one_program_takes(fused) -> None:
    # 4 query heads per KV head x 20 queries = 80 rows > MAX_BLOCK_Q: two row blocks
    codec = get_kv_codec("vidkv")
    q, key, value = _block(codec, 2, 40, 32, query_heads=8, queries=20)
    got = attention.packed_attention(q, [(key, value)], codec, backend="triton")
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    assert_close(got, want, _value_magnitude(codec, value))
    scores = attention.packed_scores(q, key, codec, backend="triton")
    want_scores = attention.decode_then_score(q, key, codec, backend="reference")
    assert_close(scores, want_scores, float(want_scores.abs().max()))


def test_blocks_and_dense_tokens_combine_into_one_softmax(fused) -> None:
    # retrieved blocks of different lengths plus unquantized tokens (sinks, recent window)
    codec = get_kv_codec("vidkv")
    heads, head_dim = 2, 64
    q, key1, value1 = _block(codec, heads, 40, head_dim, query_heads=4, queries=2, seed=1)
    _, key2, value2 = _block(codec, heads, 100, head_dim, query_heads=4, queries=2, seed=2)
    _, dense_k, dense_v = synthetic_kv(heads, 16, head_dim, seed=3)
    dense = (dense_k.to(DEVICE), dense_v.to(DEVICE))
    blocks = [(key1, value1), (key2, value2)]
    got = attention.packed_attention(q, blocks, codec, dense=dense, backend="triton", scale=0.2)
    want = attention.decode_then_attend(q, blocks, codec, dense=dense, backend="reference", scale=0.2)
    assert_close(got, want, max(_value_magnitude(codec, v) for _, v in blocks) + float(dense_v.abs().max()))


@pytest.mark.parametrize(
    "options",
    [
        {"key_4bit_fraction": 0.0},  # no 4-bit tier tensors at all
        {"key_2bit_fraction": 1 / 32},  # a 4-bit tier, no 2-bit tier (head_dim 32)
        {"group_size": 16, "salient_fraction": 0.5},
        {"salient_fraction": 0.0},  # no salient tokens: empty tensors
    ],
)
def test_other_codec_options(fused, options: dict) -> None:
    codec = get_kv_codec("vidkv", **options)
    q, key, value = _block(codec, 2, 70, 32, query_heads=4, queries=2)
    got = attention.packed_attention(q, [(key, value)], codec, backend="triton", tokens_per_program=32)
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    assert_close(got, want, _value_magnitude(codec, value))


def test_bfloat16_queries_give_bfloat16_output(fused) -> None:
    codec = get_kv_codec("vidkv")
    q, key, value = _block(codec, 2, 64, 64, query_heads=4, queries=2)
    q = q.to(torch.bfloat16)
    got = attention.packed_attention(q, [(key, value)], codec, backend="triton")
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    assert got.dtype == torch.bfloat16
    # both round the same float32 result to bf16: at most one bf16 step apart
    torch.testing.assert_close(
        got.float(), want.float(), rtol=2**-7, atol=2**-7 * _value_magnitude(codec, value)
    )


def test_restored_layer_state_is_used(fused) -> None:
    writer = get_kv_codec("vidkv")
    q, key, value = _block(writer, 2, 48, 64, query_heads=2, queries=2)
    reader = get_kv_codec("vidkv")
    reader.load_shared_state(0, writer.shared_state(0))
    got = attention.packed_attention(q, [(key, value)], reader, backend="triton")
    want = attention.decode_then_attend(q, [(key, value)], writer, backend="reference")
    assert_close(got, want, _value_magnitude(writer, value))
    with pytest.raises(QuantError, match="no key channel tiers for layer 0"):
        attention.packed_attention(q, [(key, value)], get_kv_codec("vidkv"), backend="triton")


# dispatch and errors (no Triton kernel runs) ------------------------------------------------


def test_cpu_auto_and_reference_backends_decode_then_attend(monkeypatch) -> None:
    codec = get_kv_codec("vidkv")
    q, key, value = _block(codec, 2, 33, 32, query_heads=4, queries=2)
    q = q.cpu()
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    monkeypatch.delenv("STREAMVLM_KERNELS", raising=False)
    assert torch.equal(attention.packed_attention(q, [(key, value)], codec), want)  # auto on a CPU
    monkeypatch.setenv("STREAMVLM_KERNELS", "reference")
    assert torch.equal(attention.packed_attention(q, [(key, value)], codec), want)
    assert torch.equal(
        attention.packed_scores(q, key, codec),
        attention.decode_then_score(q, key, codec, backend="reference"),
    )


def test_codecs_without_a_fused_kernel_decode_then_attend(fused) -> None:
    # kivi2 has a Triton decode kernel but no fused attention: Triton decode, then attention
    codec = get_kv_codec("kivi2")
    q, key, value = _block(codec, 2, 40, 32, query_heads=4, queries=2)
    got = attention.packed_attention(q, [(key, value)], codec, backend="triton")
    want = attention.decode_then_attend(q, [(key, value)], codec, backend="reference")
    assert torch.equal(got, want)  # the decode kernels are bit-exact
    assert not attention.has_fused_attention(codec) and attention.has_fused_attention(get_kv_codec("vidkv"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q, k, v, c: attention.packed_attention(q[0], [(k, v)], c), "drop the batch dimension"),
        (lambda q, k, v, c: attention.packed_attention(q[:3], [(k, v)], c), "multiple of KV heads"),
        (lambda q, k, v, c: attention.packed_attention(q, [(v, k)], c), "pass them in order"),
        (lambda q, k, v, c: attention.packed_attention(q, [], c), "at least one block"),
        (
            lambda q, k, v, c: attention.packed_attention(q, [(k, v), (k, replace(v, layer=1))], c),
            "one layer's blocks per call",
        ),
        (
            lambda q, k, v, c: attention.packed_attention(q, [(k, v)], c, dense=(q, q)),
            "must both be \\[2, tokens, 32\\]",
        ),
        (lambda q, k, v, c: attention.packed_scores(q, v, c), "got a value block"),
        (lambda q, k, v, c: attention.packed_scores(q[..., :16], k, c), "do not fit keys"),
    ],
)
def test_bad_input_is_a_quant_error(call, message: str) -> None:
    codec = get_kv_codec("vidkv")
    q, key, value = _block(codec, 2, 33, 32, query_heads=4, queries=2)
    with pytest.raises(QuantError, match=message):
        call(q.cpu(), key, value, codec)


# bytes moved ---------------------------------------------------------------------------------


def test_traffic_model_at_qwen_7b_geometry() -> None:
    # 28 layers, 4 KV heads, head_dim 128, 8 retrieved blocks of 720 tokens, 7 query heads per KV head
    codec = get_kv_codec("vidkv")
    _, k, v = synthetic_kv(4, 720, 128, seed=0)
    key_bits = codec.encode(k, "key").bits_per_element
    value_bits = codec.encode(v, "value").bits_per_element
    m = 128 - sum(codec.tier_counts(128))
    assert m == 64 and key_bits <= 2.0 and value_bits <= 2.0
    paths = attention.traffic_model(
        layers=28,
        kv_heads=4,
        head_dim=128,
        tokens=8 * 720,
        block_tokens=720,
        rows=7,
        key_bits=key_bits,
        value_bits=value_bits,
        sign_channels=m,
    )
    decoded, fused = paths["decode then attend"], paths["fused"]
    head_tokens = 28 * 4 * 8 * 720
    assert decoded.per_token == decoded.resident == head_tokens * 2 * 128 * 2  # bf16 K and V: 330 MB
    assert fused.resident == round(head_tokens * 128 * (key_bits + value_bits) / 8)  # 39.5 MB
    assert fused.per_question == 0
    # per key row the decode moves 2716 bytes beyond the packed read: the irfft's float32 intermediates
    assert attention.key_decode_bytes_per_row(128, 64, 2) == 2716
    assert decoded.per_question > 1.9e9 and fused.per_token < 0.2 * decoded.per_token


# compiled for a GPU ------------------------------------------------------------------------

# Run in a fresh interpreter: this process may hold triton in interpreter mode. Prints, per
# kernel, whether sm_90 compilation gave a cubin and the shared memory it asks for.
_COMPILE_SM90 = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from streamvlm.kernels import attention_vidkv_triton as fused

pointers = {"k4_zero_ptr": "*i8", "k2_zero_ptr": "*i8", "sal_zero_ptr": "*i8", "table_ptr": "*fp32"}
pointers.update({f"{name}_ptr": "*bf16" for name in ("k4_max", "k2_max", "k1_max", "tern_max", "sal_max")})
pointers.update({f"{name}_ptr": "*fp32" for name in ("q", "out", "max", "sumexp", "weighted")})
sizes = {"BLOCK_Q": 16, "BLOCK_T": fused.BLOCK_T, "BLOCK_D": 128, "B4": 16, "B2": 64, "B1": 64}
result = {}
for name in ("_packed_scores_kernel", "_packed_attention_kernel"):
    fn = getattr(fused, name)
    consts = {a: v for a, v in sizes.items() if a in fn.arg_names}
    signature = {
        a: "constexpr" if a in consts else pointers.get(a, "*u8" if a.endswith("_ptr") else "i32")
        for a in fn.arg_names
    }
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(a),): v for a, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(fused.LAUNCH_OPTIONS))
    result[name] = {"cubin": "cubin" in compiled.asm, "shared": compiled.metadata.shared}
print(json.dumps(result))
"""


def test_kernels_compile_for_sm90() -> None:
    # the interpreter accepts code the compiler may reject (tl.dot shapes, loop-carried values)
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SM90], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, kernel in result.items():
        assert kernel["cubin"], name
        assert kernel["shared"] <= 48 * 1024, (name, kernel["shared"])  # no opt-in to large shared memory
