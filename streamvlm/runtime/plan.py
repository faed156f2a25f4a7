"""One question's options, resolved once against the session's ``MemoryConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import POSITION_MODES, MemoryConfig
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
    answer_tokens: int | None = None  # most tokens of the context on the device (None: no bound)
    blocks: tuple[int, ...] | None = None  # attend exactly these block ids (no retrieval)
    positions: str = "original"  # "original" (as encoded) or "contiguous" (re-rotated, ReKV)
    query_context: str = "window"  # what the question is read over for its retrieval queries
    selection: str = "shared"  # one set of blocks for every layer, or "per_layer"
    neighbours: int = 0  # blocks taken on each side of every retrieved block
    encode_window: int = 32  # frames of the encoding window (the "window" query context)
    sampling: SamplingParams = field(default_factory=SamplingParams)

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
        top_k: int | None = None,
        answer_window: int | None = None,
        blocks: list[int] | tuple[int, ...] | None = None,
        positions: str | None = None,
        **sampling,
    ) -> AnswerPlan:
        """The plan for one question. ``top_k``, ``answer_window`` and ``positions`` override
        ``config.top_k``, ``config.answer_window`` and ``config.position_mode`` for this
        question; ``blocks`` names the block ids to attend outright; the rest are
        ``SamplingParams`` (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``,
        ``stop_token_ids``)."""
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if answer_window is not None and answer_window < 0:
            raise ConfigError(f"answer_window must be >= 0 frames, got {answer_window}")
        if positions is not None and positions not in POSITION_MODES:
            raise ConfigError(f"positions must be one of {', '.join(POSITION_MODES)}, got {positions!r}")
        try:
            params = SamplingParams(**sampling)
        except TypeError:
            known = ", ".join(f for f in SamplingParams.__dataclass_fields__)
            unknown = ", ".join(sorted(set(sampling) - set(SamplingParams.__dataclass_fields__)))
            raise ConfigError(
                f"unknown question option {unknown}; use since, until, top_k, answer_window, blocks, "
                f"positions or {known}"
            ) from None
        window = next(w for w in (answer_window, config.answer_window, config.window) if w is not None)
        return cls(
            since=since,
            until=until,
            top_k=top_k if top_k is not None else config.top_k,
            answer_window=window,
            answer_blocks=config.answer_blocks,
            answer_tokens=config.answer_tokens,
            blocks=tuple(blocks) if blocks is not None else None,
            positions=positions or config.position_mode,
            query_context=config.query_context,
            selection=config.selection,
            neighbours=config.neighbours,
            encode_window=config.window,
            sampling=params,
        )
