"""Loading a checkpoint: what from_pretrained is asked for (device, dtype, attention), the
processor configs a checkpoint ships in either form, and the per-frame pixel budget."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from streamvlm import ConfigError, ModelNotFoundError, StreamVLM
from streamvlm.cli_options import add_model_options, load_model
from streamvlm.models import loading
from streamvlm.models.bundled import TINY_SYNTH
from streamvlm.models.loading import load_backend, resolve_attention, resolve_dtype, weight_loading_options
from streamvlm.models.preprocessing import QWEN_STREAM_MAX_PIXELS, qwen_frame_budget
from streamvlm.models.tiny import TINY_LLAVA, TINY_QWEN, save_tiny_checkpoint

CUDA = torch.device("cuda:0")  # a device object needs no GPU; nothing here runs on it
BUDGET_256 = 256 * 28 * 28
HD = np.full((720, 1280, 3), 90, np.uint8)  # a 720p frame


@pytest.fixture
def qwen_dir(tmp_path):
    """The tiny Qwen2.5-VL written as a release would be (each test may change its files)."""
    save_tiny_checkpoint(TINY_QWEN, tmp_path)
    return tmp_path


def with_video_config(directory, config: dict | None):
    """The checkpoint in ``directory`` with its video processor config replaced (None: removed)."""
    path = directory / "video_preprocessor_config.json"
    if config is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(config))
    return directory


def tokens_of_a_720p_pair(engine: StreamVLM) -> int:
    session = engine.new_session()
    session.add_frame(HD, 0.0)
    session.add_frame(HD, 1.0)
    return session.stats().tokens_stored


# ----------------------------------------------------------------- from_pretrained


class RecordingModelClass:
    """Stands in for a transformers model class: records what ``from_pretrained`` is asked."""

    calls: list[dict] = []

    def __init__(self):
        self.moved_to = None

    @classmethod
    def from_pretrained(cls, source, **options):
        cls.calls.append(options)
        return cls()

    def to(self, device):
        self.moved_to = device
        return self

    def eval(self):
        return self


@pytest.fixture
def recording():
    RecordingModelClass.calls = []
    return RecordingModelClass


def test_cuda_weights_load_straight_onto_the_gpu_in_bfloat16(recording, qwen_dir, monkeypatch):
    monkeypatch.setattr(loading, "_installed", lambda package: package == "accelerate")
    dtype = resolve_dtype(None, CUDA)
    attention = resolve_attention(None, CUDA, dtype)
    model, _ = loading._load_weights("m", str(qwen_dir), recording, CUDA, dtype, attention)
    assert recording.calls == [{"dtype": torch.bfloat16, "attn_implementation": "sdpa", "device_map": CUDA}]
    assert model.moved_to is None  # never loaded into host RAM and moved


def test_without_accelerate_the_weights_are_moved_with_a_warning(recording, qwen_dir, monkeypatch):
    monkeypatch.setattr(loading, "_installed", lambda package: False)
    with pytest.warns(UserWarning, match="pip install accelerate"):
        model, _ = loading._load_weights("m", str(qwen_dir), recording, CUDA, torch.bfloat16, "sdpa")
    assert "device_map" not in recording.calls[0] and model.moved_to == CUDA


def test_cpu_loading_options():
    options = weight_loading_options(torch.device("cpu"), torch.float32, "sdpa")
    assert options["dtype"] == torch.float32 and options["attn_implementation"] == "sdpa"
    assert options.get("device_map", torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    "name, device, dtype, installed, match",
    [
        ("flash", CUDA, torch.bfloat16, True, "unknown attention implementation 'flash'; use one of sdpa"),
        ("flash_attention_2", torch.device("cpu"), torch.float32, True, "CUDA only.*--attn sdpa"),
        ("flash_attention_2", CUDA, torch.float32, True, "float16 or bfloat16.*--dtype bfloat16"),
        ("flash_attention_2", CUDA, torch.bfloat16, False, "flash-attn package.*pip install flash-attn"),
    ],
)
def test_attention_that_cannot_run_is_a_one_line_config_error(
    monkeypatch, name, device, dtype, installed, match
):
    monkeypatch.setattr(loading, "_installed", lambda package: installed)
    with pytest.raises(ConfigError, match=match) as info:
        resolve_attention(name, device, dtype)
    assert "\n" not in str(info.value)


def test_flash_attention_is_taken_where_it_can_run(monkeypatch):
    monkeypatch.setattr(loading, "_installed", lambda package: package == "flash_attn")
    assert resolve_attention("flash_attention_2", CUDA, torch.bfloat16) == "flash_attention_2"
    assert resolve_attention(None, CUDA, torch.bfloat16) == "sdpa"


def test_attention_option_sets_the_tower_and_leaves_the_streaming_prefill_exact(qwen_dir):
    """eager attention runs in the vision tower; the LLM prefill keeps streamvlm's SDPA either way."""
    answers = []
    for attention in ("sdpa", "eager"):
        engine = StreamVLM.from_pretrained(str(qwen_dir), device="cpu", attn_implementation=attention)
        config = engine.backend.model.config
        assert config._attn_implementation == config.vision_config._attn_implementation == attention
        session = engine.new_session()
        session.add_frames([(np.full((56, 84, 3), 30 * i, np.uint8), float(i)) for i in range(4)])
        answers.append(session.ask("same?", max_new_tokens=4, stop_token_ids=()).token_ids)
    assert answers[0] == answers[1]
    tiny = load_backend(TINY_LLAVA, device="cpu", attn_implementation="eager")
    assert tiny.model.config._attn_implementation == "eager"


def test_unsupported_model_type_names_the_families(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(
        tmp_path
    )
    with pytest.raises(
        ModelNotFoundError, match="is a 'qwen2' model; streamvlm supports qwen2_5_vl, llava_onevision"
    ) as info:
        StreamVLM.from_pretrained(str(tmp_path), device="cpu")
    assert "\n" not in str(info.value)


# ------------------------------------------------------- processor configs, budget


@pytest.mark.parametrize(
    "video_config",
    [
        {"size": {"shortest_edge": 56 * 56, "longest_edge": BUDGET_256}},  # transformers 5
        {"min_pixels": 56 * 56, "max_pixels": BUDGET_256},  # older checkpoints
        {"size": {"shortest_edge": 56 * 56, "longest_edge": 768 * 28 * 28}, "max_pixels": BUDGET_256},
    ],
    ids=["size", "min-max", "both"],
)
def test_a_checkpoint_asking_for_256_patches_gets_at_most_256_tokens_a_chunk(qwen_dir, video_config):
    engine = StreamVLM.from_pretrained(str(with_video_config(qwen_dir, video_config)), device="cpu")
    assert 128 < tokens_of_a_720p_pair(engine) <= 256  # 720p -> 336x588: 12 x 21 = 252 merged tokens


def test_pixel_budget_default_and_option(qwen_dir):
    plain = with_video_config(qwen_dir, None)  # as the released Qwen2.5-VL: no video processor config
    assert tokens_of_a_720p_pair(StreamVLM.from_pretrained(str(plain), device="cpu")) == 252
    wide = StreamVLM.from_pretrained(str(plain), device="cpu", max_pixels=768 * 28 * 28)
    assert tokens_of_a_720p_pair(wide) == 720  # the video processor's own default: 360 a frame
    small = StreamVLM.from_pretrained(TINY_QWEN, device="cpu", max_pixels=28 * 28)
    assert tokens_of_a_720p_pair(small) == 1
    assert qwen_frame_budget(None) == {"min_pixels": 128 * 28 * 28, "max_pixels": QWEN_STREAM_MAX_PIXELS}


def test_the_bundled_model_keeps_its_own_budget():
    spec = load_backend(TINY_SYNTH, device="cpu").preprocess.spec
    assert (spec.min_pixels, spec.max_pixels) == (3136, 64 * 28 * 28)


@pytest.mark.parametrize("max_pixels", [0, 783, 1.5e5, True])
def test_bad_pixel_budget(max_pixels):
    with pytest.raises(ConfigError, match="max_pixels must be a whole number"):
        StreamVLM.from_pretrained(TINY_QWEN, device="cpu", max_pixels=max_pixels)


def test_llava_takes_no_pixel_budget_and_reads_its_video_config(tmp_path):
    with pytest.raises(ConfigError, match="LLaVA-OneVision resizes every frame to its tower's 112x112"):
        load_backend(TINY_LLAVA, device="cpu", max_pixels=BUDGET_256)
    save_tiny_checkpoint(TINY_LLAVA, tmp_path)
    video = {"size": {"height": 112, "width": 112}, "image_mean": [0.25] * 3, "image_std": [0.5] * 3}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    spec = load_backend(str(tmp_path), device="cpu").preprocess.spec
    assert (spec.image_size, spec.image_mean) == (112, (0.25, 0.25, 0.25))
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 384, "width": 384}})
    )
    with pytest.raises(ConfigError, match="asks for size 384, but its vision tower was built for 112"):
        load_backend(str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    "config, match",
    [
        (
            {"video_processor_type": "SiglipVideoProcessor"},
            "names video_processor_type 'SiglipVideoProcessor'",
        ),
        ({"resample": 2}, "resample=2.*set resample to 3"),
        ({"do_normalize": False}, "do_normalize: false"),
        ({"merge_size": 3}, "asks for merge_size 3, but its vision tower was built for 2"),
    ],
)
def test_processor_configs_streamvlm_cannot_follow_are_rejected(qwen_dir, monkeypatch, config, match):
    monkeypatch.setattr(loading, "_load_weights", None)  # rejected before the weights load
    with pytest.raises(ConfigError, match=match) as info:
        load_backend(str(with_video_config(qwen_dir, config)), device="cpu")
    assert "\n" not in str(info.value) and "video_preprocessor_config.json" in str(info.value)


def test_a_broken_processor_config_is_a_one_line_error(qwen_dir, monkeypatch):
    monkeypatch.setattr(loading, "_load_weights", None)  # rejected before the weights load
    (qwen_dir / "video_preprocessor_config.json").write_text('{"size": ')
    with pytest.raises(ConfigError, match="video_preprocessor_config.json is not valid JSON") as info:
        load_backend(str(qwen_dir), device="cpu")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- the CLI


def test_cli_model_options_reach_from_pretrained(monkeypatch):
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    seen = {}
    monkeypatch.setattr(StreamVLM, "from_pretrained", lambda name, **kwargs: seen.update(kwargs, name=name))
    load_model(parser.parse_args(["--model", TINY_QWEN, "--max-pixels", "100352", "--attn", "eager"]))
    assert seen == {"name": TINY_QWEN, "max_pixels": 100352, "attn_implementation": "eager"}
    seen.clear()
    load_model(parser.parse_args([]))
    assert seen == {"name": TINY_SYNTH}  # nothing given: every choice left to the engine
