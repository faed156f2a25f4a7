"""Real-geometry checkpoints (issue 15, item 3): released per-layer sizes, made offline.

Each ``geom-*`` model is made once per test session (in ``$STREAMVLM_CACHE`` when set,
else a session temporary directory) and loaded by its name, in float32 on the CPU. The
expected values below are the released checkpoints' (see ``streamvlm/models/geometry.py``
for their sources), written out again here so a slip in one place shows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_video
from PIL import Image
from test_exactness import ATOL, QUESTION, first_logits, question_parts, reference_forward, stream

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.cli import main
from streamvlm.ingest.sources import FileSource
from streamvlm.models.geometry import GEOMETRY_MODELS, geometry_path, geometry_spec
from streamvlm.models.tokenizer import build_tiny_tokenizer

# released: (KV heads, head_dim, hidden size, vocab size, tied embeddings)
RELEASED_TEXT = {
    "geom-qwen2.5-vl-7b": (4, 128, 3584, 152064, False),
    "geom-qwen2.5-vl-3b": (2, 128, 2048, 151936, True),
    "geom-llava-ov-0.5b": (2, 64, 896, 152000, True),
    "geom-llava-ov-7b": (4, 128, 3584, 152128, False),
}
QWEN_SPECIALS = {
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|video_pad|>": 151656,
}
LLAVA_SPECIALS = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646, "<video>": 151647}
# LLM tokens one stored block holds for a 1280x720 frame at the default pixel budget:
# Qwen2.5-VL 2 frames -> 560x1008 px -> 20x36 merged cells = 720 (360 a frame);
# LLaVA-OneVision 1 frame -> 384x384 px -> 27x27 SigLIP patches pooled to 14x14 = 196.
TOKENS_PER_720P_BLOCK = {"qwen2.5-vl": (2, 720), "llava-onevision": (1, 196)}


@pytest.fixture(scope="module", params=GEOMETRY_MODELS)
def engine(request, geom_cache) -> StreamVLM:
    """The engine of one geom model, loaded by name (made on first use)."""
    return StreamVLM.from_pretrained(request.param, device="cpu", dtype="float32")


def pancake_frames(n: int, size: tuple[int, int] | None = None) -> list[tuple[np.ndarray, float]]:
    """The first ``n`` frames of the real footage as (rgb, t), resized to ``size`` (w, h) if given."""
    frames = []
    for frame in FileSource(shared_video("flipping_a_pancake.mkv")):
        rgb = frame.rgb
        if size is not None:
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
        frames.append((rgb, frame.t))
        if len(frames) == n:
            return frames
    raise AssertionError(f"the footage has fewer than {n} frames")


def test_checkpoint_is_a_release_with_the_released_sizes(engine):
    name = engine.backend.name
    kv_heads, head_dim, hidden, vocab, tied = RELEASED_TEXT[name]
    model = engine.backend.model
    text = model.config.text_config
    assert (text.num_key_value_heads, text.hidden_size // text.num_attention_heads) == (kv_heads, head_dim)
    assert (text.hidden_size, text.vocab_size, text.num_hidden_layers) == (hidden, vocab, 2)
    assert text.rope_parameters["rope_theta"] == 1000000.0 and text.rms_norm_eps == 1e-6
    weights = model.get_input_embeddings().weight
    assert weights.shape == (vocab, hidden)
    assert (model.get_output_embeddings().weight.data_ptr() == weights.data_ptr()) == tied
    directory = geometry_path(name)
    files = {p.name for p in directory.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    } <= files
    stored = json.loads((directory / "config.json").read_text())
    assert stored.get("dtype", stored.get("torch_dtype")) == "bfloat16"
    video_size = json.loads((directory / "video_preprocessor_config.json").read_text())["size"]
    tokenizer = engine.backend.tokenizer
    vision = model.config.vision_config
    if engine.backend.family == "qwen2.5-vl":
        specials = QWEN_SPECIALS
        assert text.rope_parameters["mrope_section"] == [16, 24, 24]
        assert text.max_position_embeddings == 128000
        assert (vision.hidden_size, vision.num_heads, vision.intermediate_size) == (1280, 16, 3420)
        assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
        assert (vision.window_size, vision.tokens_per_second) == (112, 2)
        # one window-attention block and one full-attention block, as in the release's groups
        assert vision.depth == 2 and vision.fullatt_block_indexes == [1]
        assert model.config.video_token_id == 151656
        assert video_size == {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}
    else:
        specials = LLAVA_SPECIALS
        assert text.max_position_embeddings == 32768
        assert (vision.image_size, vision.patch_size, vision.hidden_size) == (384, 14, 1152)
        assert (vision.intermediate_size, vision.num_attention_heads) == (4304, 16)
        assert model.config.vision_feature_select_strategy == "full"
        assert model.config.video_token_id == 151647
        assert video_size == {"height": 384, "width": 384}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in specials} == specials
    assert tokenizer.eos_token_id == 151645


def test_a_720p_frame_of_real_footage_gives_the_released_token_rate_and_vidkv_bits(engine):
    """Frames of the real footage scaled to 1280x720; the block is stored on the host with vidkv."""
    frames_per_block, tokens = TOKENS_PER_720P_BLOCK[engine.backend.family]
    session = engine.new_session(memory=MemoryConfig(window=0, device_bytes=0, host_codec="vidkv"))
    session.add_frames(pancake_frames(frames_per_block, size=(1280, 720)))
    (meta,) = session.blocks.metas()
    assert (meta.frames, meta.tokens) == (frames_per_block, tokens)
    bits = session.stats().kv_bits_per_element["host"]
    assert bits <= 2.0, f"vidkv stores {bits:.3f} bits per element (metadata included)"
    session.close()


def test_float32_stream_of_real_footage_equals_the_plain_forward(engine):
    """Two blocks of the footage at its own 426x240 (135 tokens a Qwen block, 196 a LLaVA one)."""
    frames, _ = zip(*pancake_frames(2 * engine.backend.default_chunk_frames), strict=True)
    times = [0.5 * i for i in range(len(frames))]
    session = stream(engine, list(frames), times, window=64)
    assert len(session.blocks.metas()) == 2
    ids, positions = question_parts(session)
    logits, _ = reference_forward(session, list(frames), ids, positions)
    torch.testing.assert_close(first_logits(session, QUESTION), logits[-1], atol=ATOL, rtol=0)


def test_a_long_stream_never_reaches_a_small_span(engine, monkeypatch):
    """The span is set just above what the first chunks use; the stream then runs far past it
    (10 s between frames: the Qwen2.5-VL time axis moves 20 positions a frame, LLaVA-OV's 1-D
    positions 196): no forward's position reaches it, the default question included."""
    largest = []
    forward = engine.backend.forward
    monkeypatch.setattr(
        engine.backend,
        "forward",
        lambda embeds, positions, *a, **k: (
            largest.append(int(positions.max())) or forward(embeds, positions, *a, **k)
        ),
    )
    clip = [(rgb, 10.0 * i) for i, (rgb, _) in enumerate(pancake_frames(12, size=(112, 112)))]
    probe = engine.new_session(memory=MemoryConfig(window=2))
    probe.add_frames(clip[:4])
    span = probe.stats().max_position_span_used + 48  # the question and its answer fit, the stream not
    session = engine.new_session(memory=MemoryConfig(window=2, max_position_span=span))
    largest.clear()
    session.add_frames(clip)
    answer = session.ask(QUESTION, max_new_tokens=2, stop_token_ids=())
    assert session.next_position > span and max(largest) < span
    assert session.stats().max_position_span_used <= span and answer.context_tokens <= span


def test_watch_real_footage_by_model_name(geom_cache, capfd):
    """`streamvlm watch` with a geom name (the smallest: the others cost minutes of CPU per run)."""
    video = shared_video("flipping_a_pancake.mkv")
    argv = ["watch", str(video), "--model", "geom-llava-ov-0.5b", "--json", "--fps", "0.5"]
    code = main([*argv, "--max-new-tokens", "2", "--ask", "what is being cooked?"])
    out, err = capfd.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["stats"]["frames_seen"] >= 5
    (answer,) = doc["answers"]
    assert answer["question"] == "what is being cooked?"


def test_names_and_ids_that_are_not_geometry_are_refused_in_one_line(tmp_path):
    assert geometry_path("tiny-qwen2.5-vl", tmp_path) is None  # other names resolve elsewhere
    with pytest.raises(ValueError, match="geom-qwen2.5-vl-7b"):
        geometry_spec("geom-qwen2.5-vl-72b")
    with pytest.raises(ValueError, match="at least 256"):
        build_tiny_tokenizer({"<|im_end|>": 7})
    assert not list(tmp_path.iterdir())  # nothing made
