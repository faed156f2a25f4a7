"""Configuration dataclasses. Every option is documented here, once.

A leaf module: it imports nothing of streamvlm but ``errors`` and ``registry``, so the
CLI parser can build its options without importing torch. Named options (codecs,
eviction, selection, queue policy) are checked against the registries their
implementations fill where they are defined, imported on the first check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError
from .registry import BLOCK_CODECS, EVICTION_POLICIES, QUEUE_POLICIES, SELECTION_MODES

POSITION_MODES = ("original", "contiguous")
QUERY_CONTEXTS = ("window", "sink")
# ``top_k="all"`` (a question option, ``--top-k all``): every block that fits, given on purpose,
# so it wins over a session's or checkpoint's top_k, where None means "not given"
EVERY_BLOCK = "all"
PRUNE_MODES = ("drop", "merge")
# the longest answer a question may ask for (SamplingParams.max_new_tokens); here, torch-free,
# so that the command line refuses more before it imports torch
MAX_NEW_TOKENS_LIMIT = 4096
# Names a model loads with (models/loading.py), here, torch-free, so that the command line
# refuses any other before it imports torch: each dtype name -> the torch dtype it means,
DTYPE_NAMES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
}
# and transformers' attention implementations (what they change: models/loading.py)
ATTENTION_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
# MemoryConfig fields a resumed session may change: they do not alter what is stored
# (memory/checkpoint.py enforces it; the command line refuses the others with --resume)
RESUME_OVERRIDABLE = frozenset(
    {
        "window",
        "answer_blocks",
        "max_question_chars",
        "device_bytes",
        "host_bytes",
        "top_k",
        "answer_window",
        "answer_tokens",
        "max_position_span",
        "query_context",
        "position_mode",
        "selection",
        "neighbours",
        "eviction",
        "disk_flush_blocks",
    }
)


@dataclass
class MemoryConfig:
    """How a session encodes frames and what it keeps.

    window:
        Frames of recent KV that each new chunk attends to while it is encoded, besides
        the sinks (the system prompt). Per-frame encode cost is bounded by this, not by
        the stream length. The default covers 32 frames (32 s at 1 fps).
    chunk_frames:
        Frames encoded together into one block. ``None`` uses the model's natural unit:
        one temporal patch (2 frames) for Qwen2.5-VL, 1 frame for LLaVA-OneVision. For
        Qwen2.5-VL it must be a multiple of the temporal patch size.
    answer_blocks:
        Blocks attended when answering, besides sinks: ``None`` means every stored block
        (lossless), ``N`` the N most recent ones.
    max_question_chars:
        Questions longer than this are rejected with ``InvalidQuestionError``.
    question_wait_s:
        A question covers every frame the session received before it: with an encoder
        thread (``Session.push_frame``) it first waits until those frames are encoded (or
        dropped by the queue). Past this many seconds of waiting it fails with
        ``QuestionTimeoutError``; ``wait=False`` on a question answers at once over what
        is encoded instead.

    Tiers (hard byte budgets on KV payload; see ``docs/memory.md``):

    device_bytes:
        Short-term tier on the model's device, full precision. The newest blocks live
        here; it should hold at least the encoding window (else window blocks are
        reloaded from host RAM for every chunk, which ``stats()`` shows as host hits).
        Default 1 GiB: a 32-frame window of Qwen2.5-VL-7B at the video pixel budget.
    host_bytes:
        Mid-term tier in host RAM (pinned when CUDA is present), encoded with
        ``host_codec``. Default 4 GiB.
    disk_dir:
        Long-term tier: a session directory of append-only segment files. Every block is
        written through to it when created, so it survives a crash and can be resumed.
        ``None`` keeps no disk tier: blocks pushed out of host RAM are dropped.
    disk_bytes:
        Optional disk budget; past it the oldest blocks are dropped and counted.
    disk_flush_blocks:
        Make the disk tier durable (fsync + block table) every this many blocks; a
        crash loses at most the blocks written since.
    host_codec, disk_codec:
        How blocks are encoded in host RAM and on disk: ``vidkv`` (the default: about 2
        bits per K/V element with metadata on blocks of a few hundred tokens), ``identity``
        (as computed, lossless), or another KV codec of ``docs/quantization.md``:
        ``fp16``, ``bf16`` (16 bits), ``int8``, ``int4`` (per token), ``kivi2`` (KIVI, 2
        bits), ``vidkv-paper`` (VidKV as published; its old name ``vidkv-ref`` is
        still accepted and read back as ``vidkv-paper``). The device tier always holds full
        precision, and retrieval summaries come from the full-precision keys whatever
        the codec. Exact answers (invariant 4 of docs/architecture.md) need ``identity`` here.
        ``stats().kv_bits_per_element`` reports what each tier really stores.
    eviction:
        Which block leaves a full tier first: ``age`` (oldest, default) or ``lru``.

    Retrieval (see ``docs/retrieval.md``):

    top_k:
        ``None`` answers over every stored block (lossless). ``N`` retrieves the N
        blocks whose key summaries best match the question (plus the ``answer_window``
        and ``answer_blocks``).
    answer_window:
        With ``top_k``: frames of the newest blocks every answer attends besides the
        retrieved ones. ``None`` (the default) means the encoding ``window``. A smaller
        one, e.g. ``2``, answers a question about the past over the blocks retrieved for
        it and the latest frames, not over a window of unrelated recent video; the
        window's other blocks are candidates for retrieval like any older block
        (docs/retrieval.md has what it changes on the tiny model).
    max_position_span:
        No forward uses a position id (or query-key distance) at or past this. ``None``
        (the default) is the model's own range, ``max_position_embeddings``. While the
        stream fits, positions are the stream's own; beyond, the attended blocks are
        re-based right after the sinks (docs/architecture.md, invariant 6).
    answer_tokens:
        Most tokens one question's context may hold on the device: sink, attended blocks,
        the question and its answer (``max_new_tokens``). ``None`` (the default) derives it
        from the device: the tokens of full-precision KV that ``device_bytes`` holds (at
        Qwen2.5-VL-7B geometry in bf16, 1 GiB is 18,724 tokens, about 148 frames at the
        streaming pixel budget), never less than the question over its answer window
        needs, and never more than the position span (``device_bytes=0``: the span alone);
        ``Session.answer_tokens`` and ``stats()`` say what it came to.
        ``top_k=None`` attends every block while they fit
        (lossless, as without it) and otherwise retrieval fills the budget best first
        (the newest ``answer_window`` frames first, then the best-matching blocks);
        retrieved sets are trimmed the same way. ``Answer.mode`` says which happened and
        ``Answer.left_out`` how many candidate blocks were not attended.
    selection:
        ``shared`` (one set of blocks for all layers, from scores summed over layers) or
        ``per_layer`` (each layer its own top-k, as ReKV).
    neighbours:
        Also take this many blocks on each side of every retrieved block.
    metric:
        ``ip`` (inner product) or ``cosine`` between question queries and key summaries.
    query_context:
        What the question is read over to get its retrieval queries: ``window`` (the
        sinks and the encoding window, the default) or ``sink`` (the question alone
        after the sinks; what the shipped tiny model's retrieval was trained for,
        docs/training.md).
    index_groups:
        Layers per retrieval index (1 = one index per layer).
    position_mode:
        ``original`` (retrieved keys keep the positions they were encoded at) or
        ``contiguous`` (re-rotated to consecutive positions, as ReKV does).

    Temporal-redundancy pruning (see ``docs/pruning.md``):

    prune_threshold:
        ``None`` (the default) encodes every visual token. A cosine similarity, e.g.
        ``0.95``: a merged visual token at least this similar to the last kept token at
        its spatial position is not encoded. Kept tokens keep their positions; above 1.0
        nothing is pruned and answers equal the unpruned ones exactly.
    prune_mode:
        ``drop`` (the default) or ``merge`` (average a redundant token into the kept one).
    prune_min_kept:
        Share of each chunk's tokens kept at least, the least redundant first (0..1).
        At least one token per chunk is always kept.

    Background encoding (``Session.push_frame``):

    queue_frames:
        Frames that may wait for the encoder thread.
    queue_policy:
        When the queue is full: ``drop_oldest`` (keep up with the live edge, the
        default) or ``drop_newest``. Dropped frames are counted in ``stats()``.
    """

    window: int = 32
    chunk_frames: int | None = None
    answer_blocks: int | None = None
    max_question_chars: int = 2000
    question_wait_s: float = 60.0
    device_bytes: int = 1 << 30
    host_bytes: int = 4 << 30
    disk_dir: str | None = None
    disk_bytes: int | None = None
    disk_flush_blocks: int = 8
    host_codec: str = "vidkv"
    disk_codec: str = "vidkv"
    eviction: str = "age"
    top_k: int | None = None
    answer_window: int | None = None
    answer_tokens: int | None = None
    max_position_span: int | None = None
    selection: str = "shared"
    neighbours: int = 0
    metric: str = "ip"
    query_context: str = "window"
    index_groups: int = 1
    position_mode: str = "original"
    prune_threshold: float | None = None
    prune_mode: str = "drop"
    prune_min_kept: float = 0.0
    queue_frames: int = 64
    queue_policy: str = "drop_oldest"

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ConfigError(f"window must be >= 0 frames, got {self.window}")
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.answer_blocks is not None and self.answer_blocks < 0:
            raise ConfigError(f"answer_blocks must be >= 0 or None, got {self.answer_blocks}")
        if self.max_question_chars < 1:
            raise ConfigError(f"max_question_chars must be >= 1, got {self.max_question_chars}")
        if not (isinstance(self.question_wait_s, (int, float)) and 0 < self.question_wait_s < math.inf):
            raise ConfigError(
                f"question_wait_s must be a positive number of seconds, got {self.question_wait_s}"
            )
        for name in ("device_bytes", "host_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 bytes, got {getattr(self, name)}")
        if self.disk_bytes is not None and self.disk_bytes < 1:
            raise ConfigError(f"disk_bytes must be positive or None, got {self.disk_bytes}")
        if self.disk_flush_blocks < 1:
            raise ConfigError(f"disk_flush_blocks must be >= 1, got {self.disk_flush_blocks}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1 or None (all blocks), got {self.top_k}")
        if self.answer_window is not None and self.answer_window < 0:
            raise ConfigError(
                f"answer_window must be >= 0 frames or None (the encoding window), got {self.answer_window}"
            )
        if self.max_position_span is not None and self.max_position_span < 2:
            raise ConfigError(
                f"max_position_span must be >= 2 or None (the model's), got {self.max_position_span}"
            )
        if self.answer_tokens is not None and self.answer_tokens < 1:
            raise ConfigError(
                f"answer_tokens must be >= 1 or None (from the device budget), got {self.answer_tokens}"
            )
        if self.neighbours < 0 or self.index_groups < 1:
            raise ConfigError("neighbours must be >= 0 and index_groups >= 1")
        self.selection = SELECTION_MODES.check("selection", self.selection)
        _one_of("metric", self.metric, ("ip", "cosine"))
        _one_of("query_context", self.query_context, QUERY_CONTEXTS)
        _one_of("position_mode", self.position_mode, POSITION_MODES)
        self.eviction = EVICTION_POLICIES.check("eviction", self.eviction)
        # an old name (``vidkv-ref``) becomes the current one here, so the rest of the
        # code, saved sessions included, only ever sees current names
        self.host_codec = BLOCK_CODECS.check("host_codec", self.host_codec)
        self.disk_codec = BLOCK_CODECS.check("disk_codec", self.disk_codec)
        self.queue_policy = QUEUE_POLICIES.check("queue_policy", self.queue_policy)
        check_pruning_options(self.prune_threshold, self.prune_mode, self.prune_min_kept)
        if self.queue_frames < 1:
            raise ConfigError(f"queue_frames must be >= 1, got {self.queue_frames}")


def check_pruning_options(threshold: float | None, mode: str, min_kept: float) -> None:
    """Raise ``ConfigError`` for pruning options that cannot work."""
    if threshold is not None and not (isinstance(threshold, (int, float)) and -1.0 < threshold < math.inf):
        raise ConfigError(
            f"prune_threshold must be a cosine similarity above -1 (e.g. 0.95), or None to keep every token; got {threshold}"
        )
    _one_of("prune_mode", mode, PRUNE_MODES)
    if not (isinstance(min_kept, (int, float)) and 0.0 <= min_kept <= 1.0):
        raise ConfigError(f"prune_min_kept must be a share of tokens between 0 and 1, got {min_kept}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
