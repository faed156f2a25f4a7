"""The baseline a user would otherwise write: plain transformers ``generate()`` over all frames so far.

It lives in ``eval`` (answers are checked against it: ``eval needle --store plain``) and
``bench`` times it (``bench stream``); ``bench`` depends on ``eval``, never the reverse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ..models.base import Backend


@torch.inference_mode()
def generate_over_all_frames(
    backend: Backend,
    system_prompt: str,
    frames: Sequence[np.ndarray],
    fps: float,
    question: str,
    max_new_tokens: int = 1,
) -> dict:
    """Preprocess every frame, then greedy ``model.generate()`` over the whole video.

    Returns seconds for preprocessing, to the first new token (``ttft_s``) and for the
    whole ``generate`` call, the prompt length and the answer ``text``. Uses
    the model's own position logic (``get_rope_index``), as a user of transformers would.
    """
    model = backend.model
    started = time.perf_counter()
    if backend.family == "qwen2.5-vl":
        frames = list(frames) + [frames[-1]] * (len(frames) % backend.temporal_patch_size)
        pixels, grid = backend.preprocess(frames)
        merge = backend.merge_size**2
        n_visual = grid[0] * grid[1] * grid[2] // merge
        inputs = dict(
            pixel_values_videos=pixels.to(backend.device, backend.dtype),
            video_grid_thw=torch.tensor([grid], device=backend.device),
            second_per_grid_ts=torch.tensor([backend.temporal_patch_size / fps], device=backend.device),
        )
        video_token = model.config.video_token_id
        qwen = True
    else:
        pixels = backend.preprocess(frames)
        per_frame = (model.config.vision_config.image_size // model.config.vision_config.patch_size + 1) // 2
        n_visual = len(frames) * per_frame**2 + 1
        inputs = dict(pixel_values_videos=pixels[None].to(backend.device, backend.dtype))
        video_token = model.config.video_token_id
        qwen = False
    parts = backend.prompt_parts(system_prompt, question)
    ids = parts.sink + [video_token] * n_visual + parts.question
    input_ids = torch.tensor([ids], device=backend.device)
    if qwen:  # get_rope_index finds the video tokens by type (2 = video)
        inputs["mm_token_type_ids"] = (input_ids == video_token).int() * 2
    prepared = time.perf_counter()
    first_token = _FirstTokenClock()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        streamer=first_token,
        **inputs,
    )
    done = time.perf_counter()
    text = backend.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    return {
        "preprocess_s": prepared - started,
        "ttft_s": (first_token.at or done) - prepared,
        "generate_s": done - prepared,
        "prompt_tokens": len(ids),
        "text": text.strip(),
    }


class _FirstTokenClock:
    """A ``generate()`` streamer that notes when the first new token comes out.

    ``generate`` calls ``put`` once with the prompt, then once per new token.
    """

    def __init__(self):
        self.at: float | None = None
        self._calls = 0

    def put(self, value) -> None:
        self._calls += 1
        if self._calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass
