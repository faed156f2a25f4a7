"""Training path: what is trained is what a session streams (same layout, positions, preprocessing)."""

from __future__ import annotations

import numpy as np
import torch

from streamvlm import MemoryConfig, StreamVLM
from streamvlm.runtime.session import DEFAULT_SYSTEM_PROMPT
from streamvlm.train.batches import IGNORE, Sample, collate, encode_sample
from streamvlm.train.config import TrainConfig
from streamvlm.train.loop import build_trainee, save, train
from streamvlm.train.tokenizer import build_word_tokenizer, words_of

COLOURS = {"red": (230, 40, 40), "blue": (40, 60, 230), "green": (40, 200, 60)}
VOCAB = words_of(["what colour was the square?", "system user assistant", *COLOURS])


def square_clip(rng: np.random.Generator, progress: float = 1.0) -> Sample:
    """A large square of one colour moves through a short clip; the question asks its colour.

    Easy on purpose: these tests check that the training path learns and that what it
    saves answers through a session, not how hard the synthetic world is.
    """
    name = list(COLOURS)[rng.integers(len(COLOURS))]
    n = int(rng.integers(3, 9))
    frames = []
    for _ in range(n):
        frame = np.full((112, 112, 3), 90, np.uint8)
        y, x = rng.integers(0, 56, size=2)
        frame[y : y + 56, x : x + 56] = COLOURS[name]
        frames.append(frame)
    return Sample(frames, [float(i) for i in range(n)], "What colour was the square?", name)


def test_word_tokenizer_round_trips_words_and_keeps_chat_markers():
    tokenizer = build_word_tokenizer(VOCAB)
    ids = tokenizer("<|im_start|>user\nWhat colour was the square?<|im_end|>", add_special_tokens=False)[
        "input_ids"
    ]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "<|im_start|>" and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user what colour was the square?"
    assert tokenizer("purple", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_checkpoint_streams_exactly_as_it_was_trained(tmp_path):
    backend = build_trainee(VOCAB, TrainConfig(), seed=0)
    sample = square_clip(np.random.default_rng(4))
    encoded = encode_sample(backend, DEFAULT_SYSTEM_PROMPT, sample)
    batch = collate([encoded], backend.tokenizer.pad_token_id)
    batch.pop("labels")
    with torch.inference_mode():
        trained_logits = backend.model.eval()(**batch).logits[0].float()
    answer_start = encoded.labels.index(next(x for x in encoded.labels if x != IGNORE))
    save(backend, tmp_path, {})
    engine = StreamVLM.from_pretrained(str(tmp_path), device="cpu", dtype="float32")
    session = engine.new_session(memory=MemoryConfig(window=64))  # chunk by chunk, 2 frames a block
    session.add_frames(zip(sample.frames, sample.times, strict=True))
    stream = session.ask_stream(sample.question, max_new_tokens=1, stop_token_ids=())
    list(stream)
    assert session.stats().blocks == (len(sample.frames) + 1) // 2
    from streamvlm.runtime.context import concat_layers

    b = engine.backend
    ids = b.prompt_parts(session.system_prompt, sample.question).question
    cache = b.new_cache(
        concat_layers(
            [session.sink.kv, *(x.layers for x in session.blocks.load(range(len(session.blocks.metas()))))]
        )
    )
    hidden = b.forward(b.question_embeds(ids), b.text_positions(session.next_position, len(ids)), cache)
    streamed = b.logits(hidden[-1:])[0]
    torch.testing.assert_close(streamed, trained_logits[answer_start - 1], atol=1e-4, rtol=0)
    assert stream.answer.token_ids == [int(trained_logits[answer_start - 1].argmax())]


def test_sixty_steps_learn_the_square_colour_and_the_checkpoint_answers(tmp_path):
    config = TrainConfig(
        steps=60, batch_size=8, lr=3e-3, warmup=10, eval_every=60, eval_samples=48, log_every=1000
    )
    result = train(square_clip, VOCAB, tmp_path, config, log=lambda _: None)
    assert result["held_out_accuracy"] >= 0.9, result
    engine = StreamVLM.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(99)
    right = 0
    for _ in range(12):
        sample = square_clip(rng)
        session = engine.new_session()
        session.add_frames(zip(sample.frames, sample.times, strict=True))
        right += session.ask(sample.question, max_new_tokens=3).text == sample.answer
    assert right >= 10
