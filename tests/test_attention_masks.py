"""The language model's attention without materialised masks (issue 20, item 2).

SDPA's flash and cuDNN backends take no tensor mask, so ``streamvlm_sdpa`` states every
streaming case as no mask, ``is_causal`` or a ``causal_lower_right`` bias. These tests pin
the pattern each case gets, that each equals the boolean mask it replaces, that SDPA's
own backend checks accept what is passed, and that a prefill over per-layer lengths is
unchanged. Which kernel CUDA then picks can only be seen on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import CausalBias
from torch.overrides import TorchFunctionMode

from streamvlm.models import hf_compat
from streamvlm.models.loading import load_backend
from streamvlm.models.tiny import TINY_LLAVA, TINY_MODELS, TINY_QWEN


def bottom_right_mask(q_len: int, kv_len: int) -> torch.Tensor:
    """The boolean mask streamvlm_sdpa built before: every cached slot, new tokens causal."""
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)[None, None]


def test_each_streaming_case_gets_a_pattern_without_a_tensor_mask():
    assert hf_compat.causal_pattern(1, 40) == (None, False)  # one query sees every slot
    assert hf_compat.causal_pattern(7, 7) == (None, True)  # empty cache: plain causal
    bias, is_causal = hf_compat.causal_pattern(5, 40)  # new tokens after 35 cached slots
    assert isinstance(bias, CausalBias) and not is_causal
    assert torch.equal(bias._materialize(), bottom_right_mask(5, 40)[0, 0])


@pytest.mark.parametrize("q_len,kv_len", [(1, 40), (7, 7), (5, 40), (40, 41)])
def test_each_pattern_attends_exactly_like_the_boolean_mask(q_len, kv_len):
    generator = torch.Generator().manual_seed(q_len * 100 + kv_len)
    query = torch.randn(1, 4, q_len, 16, generator=generator)
    key, value = (torch.randn(1, 4, kv_len, 16, generator=generator) for _ in range(2))
    mask, is_causal = hf_compat.causal_pattern(q_len, kv_len)
    fast = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal)
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=bottom_right_mask(q_len, kv_len))
    assert torch.equal(fast, reference)


@pytest.fixture(scope="module", params=TINY_MODELS)
def backend(request):
    return load_backend(request.param, device="cpu", dtype="float32")


class SdpaMasks(TorchFunctionMode):
    """Records the ``attn_mask`` of every top-level SDPA call (a CausalBias's own inner call is not seen)."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.masks.append(kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return func(*args, **kwargs)


def test_no_streaming_forward_hands_sdpa_a_tensor_mask(backend):
    """A sink prefill (empty cache), a question over a cached context, one answer token:
    every SDPA call gets no mask or a CausalBias, which the flash backends accept."""
    cache = backend.new_cache()
    with SdpaMasks() as seen:
        backend.forward(backend.embed_ids([1, 2, 3]), backend.text_positions(0, 3), cache)
        backend.forward(backend.embed_ids([4, 5]), backend.text_positions(3, 2), cache)
        backend.forward(backend.embed_ids([6]), backend.text_positions(5, 1), cache)
    assert len(seen.masks) == 3 * backend.num_layers
    assert all(mask is None or isinstance(mask, CausalBias) for mask in seen.masks)


def test_an_explicit_mask_is_passed_through(backend):
    cache = backend.new_cache(per_layer_context(backend, [6] * backend.num_layers))
    mask = torch.ones(1, 1, 2, 8, dtype=torch.bool)
    with SdpaMasks() as seen:
        backend.forward(backend.embed_ids([4, 5]), backend.text_positions(6, 2), cache, attention_mask=mask)
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in seen.masks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="which SDPA kernel runs can only be seen on CUDA")
def test_streaming_forwards_run_on_fused_kernels_on_cuda():
    """With SDPA held to its fused backends (flash, memory-efficient, cuDNN) a call only the math
    backend could serve raises: a prefill over an empty cache (``is_causal``, GQA through
    ``enable_gqa``), a question over a cached prefix (``causal_lower_right``, heads repeated) and
    an answer token (no mask) must all run there. Which of them flash itself serves is for a
    profile to show (bench gpu)."""
    backend = load_backend(TINY_QWEN, device="cuda", dtype="bfloat16")
    cache = backend.new_cache()
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        backend.forward(backend.embed_ids([1, 2, 3]), backend.text_positions(0, 3), cache)
        backend.forward(backend.embed_ids([4, 5]), backend.text_positions(3, 2), cache)
        backend.forward(backend.embed_ids([6]), backend.text_positions(5, 1), cache)


def per_layer_context(backend, lengths):
    generator = torch.Generator().manual_seed(sum(lengths))

    def random(n):
        return torch.randn(backend.num_kv_heads, n, backend.head_dim, generator=generator)

    return [(random(n), random(n)) for n in lengths]


def test_prefill_over_per_layer_lengths_equals_the_masked_call(backend):
    """Layers of different lengths (per-layer retrieval): the bias-based prefill equals the
    same prefill with each layer's boolean mask built explicitly, as before."""
    lengths = [12 + 5 * i for i in range(backend.num_layers)]
    layers = per_layer_context(backend, lengths)
    embeds = backend.embed_ids([5, 6, 7, 8])
    positions = backend.text_positions(max(lengths), 4)
    hidden = backend.forward(embeds, positions, backend.new_cache(layers))

    def masked(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop("is_causal", None)
        mask = bottom_right_mask(query.shape[2], key.shape[2])
        return hf_compat.sdpa_attention_forward(module, query, key, value, mask, is_causal=False, **kwargs)

    hf_compat.AttentionInterface.register("test_masked_sdpa", masked)
    config = backend.language_model.config
    try:
        hf_compat._STREAMING_ATTENTION["test_masked"] = "test_masked_sdpa"
        previous, config._attn_implementation = config._attn_implementation, "test_masked"
        reference = backend.forward(embeds, positions, backend.new_cache(layers))
    finally:
        config._attn_implementation = previous
        del hf_compat._STREAMING_ATTENTION["test_masked"]
    assert torch.equal(hidden, reference)


@pytest.mark.parametrize("name", [TINY_QWEN, TINY_LLAVA])
@pytest.mark.parametrize("loaded", ["sdpa", "eager"])
def test_the_loaded_implementation_reaches_the_vision_tower_and_picks_the_llms(name, loaded):
    backend = load_backend(name, device="cpu", dtype="float32", attn_implementation=loaded)
    model = backend.model.model
    tower = getattr(model, "visual", None) or model.vision_tower
    assert tower.config._attn_implementation == loaded
    assert backend.language_model.config._attn_implementation == loaded  # plain model(...) calls
    # streaming prefills run the per-layer-lengths form of it (eager: SDPA's math)
    assert hf_compat.streaming_attention(loaded) == hf_compat.STREAMVLM_SDPA


def test_flash_attention_2_streams_through_flash_with_its_own_causal_alignment():
    assert hf_compat.streaming_attention("flash_attention_2") == hf_compat.STREAMVLM_FLASH
