"""Result types returned by a session: plain dataclasses with ``to_dict`` for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class BlockRef:
    """Which stored block an answer attended to, and where it lived."""

    id: int
    t_start: float
    t_end: float
    tokens: int
    tier: str


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds for one answer.

    ``wait_s`` is the time the question waited for the frames received before it to be
    encoded (0 with ``wait=False`` or without an encoder thread). The answer starts after
    it: ``ttft_s`` runs from there until the first answer token is known (context
    assembly + question prefill); ``total_s`` until the last token.
    """

    ttft_s: float
    total_s: float
    prefill_s: float
    decode_s: float
    new_tokens: int
    wait_s: float = 0.0


@dataclass(frozen=True)
class Answer:
    """One answered question."""

    question: str
    text: str
    asked_at: float  # stream time (seconds) of the latest frame seen when asked
    blocks: list[BlockRef]
    timings: Timings
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" (stop token) or "length" (max_new_tokens)
    mode: str = "lossless"  # "lossless": every candidate block attended; else "retrieval"
    left_out: int = 0  # candidate blocks not attended (retrieval, or the answer_tokens budget)
    # the KV the answer held on the device at its end (sink, blocks, question, answer tokens):
    # the largest layer's tokens (bounded by answer_tokens) and the bytes over every layer
    context_tokens: int = 0
    context_bytes: int = 0
    # frames received before the question that the full encoder queue dropped (over the
    # session's life): the answer could not see them; 0 without an encoder thread
    frames_dropped: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SessionStats:
    """What a session has seen and what it holds. Bytes and bits are per memory tier.

    ``kv_bits_per_element``: stored bits of the keys and values a tier holds (codec payload
    and per-block codec metadata) over the number of K/V elements; ``None`` for an empty
    tier. The device tier holds full precision (32 for float32). Per-layer codec state
    (``vidkv``'s channel tiers), stored once per stream, is not in it: it is
    ``codec_state_bytes``. ``bytes_per_tier`` counts everything held, positions and
    summaries included (on disk: whole records).
    """

    frames_seen: int
    frames_encoded: int
    chunks_encoded: int
    visual_tokens_seen: int  # merged visual tokens of every encoded chunk
    visual_tokens_kept: int  # of those, the ones pruning kept (all of them without pruning)
    blocks: int
    tokens_stored: int
    sink_tokens: int
    stream_time: float
    next_position: int
    # largest position id any forward of this process used, plus one: stays below the model's
    # span (MemoryConfig.max_position_span) however long the stream
    max_position_span_used: int
    answer_tokens: int  # the most tokens one question's context holds on the device (its budget)
    bytes_per_tier: dict[str, int]
    kv_bits_per_element: dict[str, float | None]
    codec_state_bytes: dict[str, int]  # per-layer codec state, once per stream (not per block)
    encode_s: float
    hits_per_tier: dict[str, int]  # blocks loaded for questions, by the tier they came from
    window_hits_per_tier: dict[
        str, int
    ]  # window blocks read while encoding (host/disk: window too big for the device)
    load_s: float  # seconds spent loading blocks for questions
    dropped_blocks: int  # blocks that left memory entirely (host budget without disk, or disk budget)
    indexed_blocks: int
    # host RAM outside every tier budget: metadata tensors of blocks in memory tiers and the index's
    # in-RAM summaries (flat with a disk tier, whose blocks keep only scalars: docs/memory.md)
    metadata_bytes: int
    frames_dropped: int  # frames the background queue dropped because it was full
    queue_depth: int  # frames waiting for the encoder thread

    def to_dict(self) -> dict:
        return asdict(self)
