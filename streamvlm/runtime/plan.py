"""One question's options, resolved once against the session's ``MemoryConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import EVERY_BLOCK, POSITION_MODES, MemoryConfig
from ..errors import ConfigError
from .decode import SamplingParams


@dataclass(frozen=True)
class AnswerPlan:
    """How one question is answered: which blocks it may attend, how they are laid out,
    and how its tokens are chosen.

    Build it with ``AnswerPlan.resolve(config, **options)``: every option left out takes
    the session's ``MemoryConfig`` value, and bad values raise ``ConfigError`` there, once,
    for the Python API, the CLI, the servers and the demo alike.
    """

    since: float | None = None  # stream seconds: only blocks ending at or after this
    until: float | None = None  # stream seconds: only blocks starting at or before this
    top_k: int | None = None  # None: attend every candidate block (lossless); N: retrieve N
    # frames of the newest blocks attended besides the retrieved ones (with top_k or answer_blocks)
    answer_window: int = 0
    answer_blocks: int | None = None  # the N newest blocks attended besides the retrieved ones
    # most tokens of the context on the device; None: the session's budget (Session.answer)
    answer_tokens: int | None = None
    blocks: tuple[int, ...] | None = None  # attend exactly these block ids (no retrieval)
    positions: str = "original"  # "original" (as encoded) or "contiguous" (re-rotated, ReKV)
    query_context: str = "window"  # what the question is read over for its retrieval queries
    selection: str = "shared"  # one set of blocks for every layer, or "per_layer"
    neighbours: int = 0  # blocks taken on each side of every retrieved block
    encode_window: int = 32  # frames of the encoding window (the "window" query context)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # True: the question covers every frame the session received before it, waiting (at
    # most wait_s seconds) for the encoder thread to encode them; False: it answers at
    # once over what the encoder has taken so far
    wait: bool = True
    wait_s: float = 60.0

    @property
    def retrieves(self) -> bool:
        """Whether the question's queries may pick blocks from the index: with ``top_k``,
        or with a token budget that every block may not fit."""
        return self.blocks is None and (self.top_k is not None or self.answer_tokens is not None)

    @classmethod
    def resolve(
        cls,
        config: MemoryConfig,
        *,
        since: float | None = None,
        until: float | None = None,
        top_k: int | str | None = None,
        answer_window: int | None = None,
        blocks: list[int] | tuple[int, ...] | None = None,
        positions: str | None = None,
        answer_tokens: int | None = None,
        wait: bool = True,
        **sampling,
    ) -> AnswerPlan:
        """The plan for one question. ``top_k``, ``answer_window`` and ``positions`` override
        ``config.top_k``, ``config.answer_window`` and ``config.position_mode`` for this
        question (``top_k="all"``: every block that fits, whatever the session's top_k), ``answer_tokens`` overrides ``config.answer_tokens`` (left unset by both,
        the session answering derives it: ``Session.answer``); ``blocks`` names the block ids to attend outright;
        ``wait=False`` answers over what is encoded instead of waiting for every frame
        received before the question (at most ``config.question_wait_s``); the rest are
        ``SamplingParams`` (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``,
        ``stop_token_ids``). ``since`` / ``until`` are checked against the stream where it
        is known, in ``Session.answer``."""
        counts = isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1
        if top_k is not None and top_k != EVERY_BLOCK and not counts:
            raise ConfigError(f"top_k must be >= 1 or {EVERY_BLOCK!r}, got {top_k!r}")
        if answer_window is not None and answer_window < 0:
            raise ConfigError(f"answer_window must be >= 0 frames, got {answer_window}")
        if answer_tokens is not None and answer_tokens < 1:
            raise ConfigError(f"answer_tokens must be >= 1, got {answer_tokens}")
        if not isinstance(wait, bool):
            raise ConfigError(f"wait must be true or false, got {wait!r}")
        if positions is not None and positions not in POSITION_MODES:
            raise ConfigError(f"positions must be one of {', '.join(POSITION_MODES)}, got {positions!r}")
        try:
            params = SamplingParams(**sampling)
        except TypeError:
            known = ", ".join(f for f in SamplingParams.__dataclass_fields__)
            unknown = ", ".join(sorted(set(sampling) - set(SamplingParams.__dataclass_fields__)))
            raise ConfigError(
                f"unknown question option {unknown}; use since, until, top_k, answer_window, blocks, "
                f"positions, answer_tokens, wait or {known}"
            ) from None
        window = next(w for w in (answer_window, config.answer_window, config.window) if w is not None)
        return cls(
            since=since,
            until=until,
            top_k=config.top_k if top_k is None else None if top_k == EVERY_BLOCK else top_k,
            answer_window=window,
            answer_blocks=config.answer_blocks,
            answer_tokens=answer_tokens if answer_tokens is not None else config.answer_tokens,
            blocks=tuple(blocks) if blocks is not None else None,
            positions=positions or config.position_mode,
            query_context=config.query_context,
            selection=config.selection,
            neighbours=config.neighbours,
            encode_window=config.window,
            sampling=params,
            wait=wait,
            wait_s=config.question_wait_s,
        )


def answer_budget(config: MemoryConfig, kv_bytes_per_token: int, span: int) -> int:
    """The most tokens one question's context may hold: ``config.answer_tokens`` if set,
    else what ``config.device_bytes`` holds of full-precision KV, and never more than the
    position ``span``.

    Why the device budget: it is what the user gave streamvlm's KV on the device, and a
    question's context is KV on the device. Why the span: with 1-D positions a context
    re-based after the sinks takes one position a token, so a longer one could not be laid
    out inside the model's range at all. ``device_bytes=0`` (nothing kept on the device, as
    on CPU) leaves the span as the only bound.
    """
    if config.answer_tokens is not None:
        return config.answer_tokens
    if config.device_bytes == 0:
        return span
    return max(1, min(span, config.device_bytes // kv_bytes_per_token))
