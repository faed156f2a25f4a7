"""The transformers adapter (streamvlm/models/hf_compat.py) on the installed transformers.

A new transformers release is checked here first: no deprecated call on either model
family, and every internal the adapter reaches still behaves as the runtime needs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers
from packaging.requirements import Requirement

from streamvlm.models import hf_compat
from streamvlm.models.loading import load_backend
from streamvlm.models.tiny import TINY_LLAVA, TINY_MODELS, TINY_QWEN, save_tiny_checkpoint


@pytest.fixture(scope="module", params=TINY_MODELS)
def backend(request):
    return load_backend(request.param, device="cpu")


def exercise(backend) -> None:
    """A frame chunk and a question through every adapter path: prefill, queries, rotary, caches."""
    frames = [np.full((56, 56, 3), 128, dtype=np.uint8)] * backend.frame_multiple
    cache = backend.new_cache()
    sink = backend.text_positions(0, 3)
    backend.forward(backend.embed_ids([1, 2, 3]), sink, cache)
    chunk = backend.encode_frames(frames, [0.0] * len(frames), video_start=3, next_position=3)
    backend.forward(chunk.embeds, chunk.positions, backend.new_cache(hf_compat.cached_layers(cache)))
    question = backend.text_positions(10, 2)
    backend.question_queries(
        backend.embed_ids([4, 5]), question, backend.new_cache(hf_compat.cached_layers(cache))
    )
    backend.rotate_keys(torch.ones(backend.num_kv_heads, 2, backend.head_dim), question)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_loading_and_forward_raise_no_deprecation(name, tmp_path):
    save_tiny_checkpoint(name, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FutureWarning, DeprecationWarning and any other
        for source in (name, str(tmp_path)):  # built in memory, and through from_pretrained
            exercise(load_backend(source, device="cpu"))


def test_prefill_appends_the_new_tokens_to_every_layer(backend):
    cache = backend.new_cache()
    backend.forward(backend.embed_ids([1, 2, 3]), backend.text_positions(0, 3), cache)
    backend.forward(backend.embed_ids([4, 5]), backend.text_positions(3, 2), cache)
    layers = hf_compat.cached_layers(cache)
    assert len(layers) == backend.num_layers
    assert {tuple(k.shape) for k, _ in layers} == {(backend.num_kv_heads, 5, backend.head_dim)}


def test_prefill_equals_the_models_own_forward(backend):
    """With every slot visible, streamvlm's attention function and cache path equal a plain model call."""
    embeds, positions = backend.embed_ids([7, 8, 9, 10]), backend.text_positions(0, 4)
    ours = backend.forward(embeds, positions, backend.new_cache())
    with torch.inference_mode():
        plain = backend.language_model(
            inputs_embeds=embeds[None], position_ids=backend.model_position_ids(positions), use_cache=False
        ).last_hidden_state[0]
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)


def test_cache_round_trips_layers_of_different_lengths(backend):
    shape = (backend.num_kv_heads, backend.head_dim)
    layers = [(torch.randn(shape[0], n, shape[1]), torch.randn(shape[0], n, shape[1])) for n in (3, 5)]
    back = hf_compat.cached_layers(backend.new_cache(layers))
    for (k, v), (k2, v2) in zip(layers, back, strict=True):
        assert torch.equal(k, k2) and torch.equal(v, v2)


def test_rotary_is_the_rotation_the_decoder_applies(backend):
    """Keys captured after RoPE equal pre-RoPE keys rotated with the adapter's (cos, sin)."""
    positions = backend.text_positions(5, 3)
    embeds = backend.embed_ids([1, 2, 3])
    raw: dict[int, torch.Tensor] = {}
    cache = backend.new_cache()
    with hf_compat.projection_outputs(
        backend.language_model, "k_proj", lambda i, out: raw.setdefault(i, out[0])
    ):
        backend.forward(embeds, positions, cache)
    for (cached_keys, _), layer in zip(hf_compat.cached_layers(cache), sorted(raw), strict=True):
        pre_rope = raw[layer].view(3, backend.num_kv_heads, backend.head_dim).transpose(0, 1)
        torch.testing.assert_close(backend.rotate_keys(pre_rope, positions), cached_keys, atol=1e-5, rtol=0)


def test_projection_hooks_and_attention_switch_leave_the_model_as_it_was(backend):
    q_proj = backend.language_model.layers[0].self_attn.q_proj
    config = backend.language_model.config
    before = config._attn_implementation
    queries = backend.query_states(
        backend.embed_ids([1, 2]), backend.text_positions(0, 2), backend.new_cache()
    )
    heads = config.num_attention_heads
    assert [tuple(q.shape) for q in queries] == [(heads, 2, backend.head_dim)] * backend.num_layers
    assert not q_proj._forward_hooks
    assert config._attn_implementation == before
    with pytest.raises(RuntimeError), hf_compat.attention_implementation(config, hf_compat.STREAMVLM_SDPA):
        raise RuntimeError
    assert config._attn_implementation == before


def test_progress_bars_switch_is_restored():
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    with hf_compat.progress_bars(shown=not before):
        assert hf_logging.is_progress_bar_enabled() is (not before)
    assert hf_logging.is_progress_bar_enabled() is before


def test_checkpoint_file_is_none_for_a_file_the_checkpoint_lacks(tmp_path):
    save_tiny_checkpoint(TINY_LLAVA, tmp_path)
    assert hf_compat.checkpoint_file(str(tmp_path), "video_preprocessor_config.json") is None
    assert hf_compat.checkpoint_file(str(tmp_path), "preprocessor_config.json") == str(
        tmp_path / "preprocessor_config.json"
    )


def test_installed_transformers_is_in_the_pinned_range(repo_root):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dependencies = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name == "transformers"]
    assert transformers.__version__ in pin.specifier, (
        f"transformers {transformers.__version__} is outside the tested range {pin.specifier}"
    )


def test_a_tiny_model_is_built_with_sdpa():
    backend = load_backend(TINY_QWEN, device="cpu")
    assert backend.model.config._attn_implementation == "sdpa"
