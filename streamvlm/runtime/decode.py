"""streamvlm's own decode loop: explicit positions, token by token.

``generate()`` rebuilds positions from the cache length, which is wrong as soon as the
context holds a subset of the stream; this loop takes the next position from the
session instead (invariant 1 of docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..config import MAX_NEW_TOKENS_LIMIT
from ..errors import ConfigError
from ..models.base import Backend


@dataclass(frozen=True)
class SamplingParams:
    """How answer tokens are chosen.

    temperature 0 is greedy; otherwise tokens are sampled from the softmax at that
    temperature, restricted to the smallest set whose probability reaches ``top_p``.
    ``seed`` makes sampling repeatable. ``stop_token_ids`` None means the model's own.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ConfigError(
                f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}"
            )
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """The next token id for float logits [vocab], as a 1-element long tensor on the logits' device.

    Only torch ops on the logits' own device and no host read, so on a GPU choosing a
    token neither copies the vocabulary's logits to the host nor waits for the device.
    ``generator`` must live on that device too (``sampling_generator``).
    """
    if params.temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep a token if the mass before it is still below top_p (the first always stays);
        # masked_fill, not boolean indexing, which would read the mask's count on the host
        drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= params.top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill_(drop, 0))
    return torch.multinomial(probs, 1, generator=generator)


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from float logits [vocab] (``sample_token``, read on the host)."""
    return int(sample_token(logits, params, generator))


def sampling_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The random generator seeded sampling draws from, on ``device`` (None: torch's default)."""
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def decode_tokens(
    backend: Backend,
    cache,
    first_logits: torch.Tensor,
    next_position: int,
    params: SamplingParams,
    serialise: Callable[[], object] | None = None,
) -> Iterator[int]:
    """Yield answer token ids, feeding each back at ``next_position``, ``next_position + 1``, ...

    ``first_logits`` are the logits after the prompt. A stop token ends the answer and
    is not yielded. ``serialise`` returns a context manager held around each model call
    (the engine's device lock), so other sessions can run between tokens.

    Everything per token stays on the logits' device: the token is sampled there, fed
    back to the embedding as a device tensor, at a position sliced from positions built
    once for the whole answer. The one host read per token is the token id itself, which
    the caller streams and the stop check needs.
    """
    device = first_logits.device
    generator = sampling_generator(params, device)
    stops = set(params.stop_token_ids if params.stop_token_ids is not None else backend.stop_token_ids)
    positions = backend.text_positions(next_position, params.max_new_tokens, device=device)
    logits = first_logits
    for step in range(params.max_new_tokens):
        token = sample_token(logits, params, generator)
        token_id = int(token)  # the one host read per token
        if token_id in stops:
            return
        yield token_id
        if step + 1 == params.max_new_tokens:
            return
        embeds = backend.embed_ids(token)
        here = positions[:, step : step + 1]
        if serialise is None:
            hidden = backend.forward(embeds, here, cache)
        else:
            with serialise():
                hidden = backend.forward(embeds, here, cache)
        logits = backend.logits(hidden[-1:])[0]


class TextStreamer:
    """Turns answer token ids into text deltas, holding back split UTF-8 characters.

    Each push decodes only the last few tokens (from ``_prefix`` on): decoding the whole
    answer per token would make streaming quadratic in the answer length.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # tokens before this are settled and emitted
        self._read = 0  # tokens before this have been emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        settled = self._decode(self._ids[self._prefix : self._read])
        current = self._decode(self._ids[self._prefix :])
        if len(current) <= len(settled) or current.endswith("\ufffd"):
            return ""  # nothing printable yet, or a multi-byte character is incomplete
        self._prefix, self._read = self._read, len(self._ids)
        return current[len(settled) :]

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        settled = self._decode(self._ids[self._prefix : self._read])
        current = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return current[len(settled) :]

    @property
    def text(self) -> str:
        return self._decode(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)
