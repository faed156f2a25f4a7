"""A question's path: plain steps over explicit arguments, as gpt-fast's ``generate.py``.

1. ``question_inputs``: the question's embeddings at the position after everything seen.
2. ``retrieval_queries``: with retrieval, the question is first prefilled over the sinks
   and the encoding window (or the sinks alone: ``query_context``) for its per-layer
   queries, which ``BlockMemory.select`` turns into a ``Selection`` (docs/retrieval.md).
3. ``complete_pruned``: a pruned block attended without the blocks its dropped tokens'
   references are in gets those reference tokens back, at the dropped tokens' positions
   (docs/pruning.md), within the question's token budget.
4. ``contiguous_layout``: optionally, the picked blocks re-rotated to consecutive positions.
5. ``prefill``: the question over the sinks and the picked blocks, layer by layer.
6. ``decode_tokens`` (decode.py): the answer token by token at explicit positions.

``prefill_answer`` runs steps 1-5 under the device lock (the session takes it, so the
blocks it reads cannot change); ``decode_answer`` runs step 5 and streams text.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial

import torch

from ..memory.block import Block, BlockMeta
from ..memory.manager import BlockMemory
from ..memory.pruning import find_references
from ..models.base import Backend, LayerKV
from ..retrieval.select import Selection
from .answer import Answer, BlockRef, Timings
from .context import cache_footprint, layer_parts, per_layer_parts, scatter_tokens
from .decode import TextStreamer, decode_tokens
from .plan import AnswerPlan
from .positions import PositionBound, lay_out


@dataclass(frozen=True)
class Sink:
    """The text before the video (system prompt, opening of the user turn), encoded once
    per stream at positions ``0 .. len(ids) - 1``; every forward attends to it."""

    ids: list[int]
    positions: torch.Tensor  # [position_dims, len(ids)]
    kv: tuple[LayerKV, ...]


class AnswerStream:
    """An answer's text deltas as they are produced: iterate it.

    ``position`` (where the question starts) and ``selection`` (the blocks attended, per
    layer) are set once the question is prefilled, ``answer`` once the stream is exhausted.
    Nothing runs before the first ``next``: a question that waits for frames waits there,
    in the thread that iterates it.
    """

    def __init__(self, question: str, asked_at: float, run: Callable[[AnswerStream], Iterator[str]]):
        self.question = question
        self.asked_at = asked_at  # stream time of the latest frame received when asked
        self.position: int | None = None  # where the question starts: after everything it covers
        self.selection: Selection | None = None
        self.answer: Answer | None = None
        self._deltas = run(self)

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def __next__(self) -> str:
        return next(self._deltas)


def question_inputs(
    backend: Backend, system_prompt: str, question: str, position: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The question turn's embeddings and their positions from ``position`` on."""
    ids = backend.prompt_parts(system_prompt, question).question
    embeds = backend.question_embeds(ids)
    return embeds, backend.text_positions(position, embeds.shape[0])


def retrieval_queries(
    backend: Backend, sink: Sink, window: Sequence[Block], embeds: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The question's per-layer queries [layers, dim], read over the sink and ``window``."""
    cache = backend.cache_of_parts(layer_parts(sink.kv, window), embeds.shape[0])
    return backend.question_queries(embeds, positions, cache)


# The most blocks one question loads to complete pruned blocks with their references: a
# still scene's references can lie in many older blocks, each a load (and a decode) for a
# few tokens. The blocks that hold the most references go first.
REFERENCE_BLOCKS = 4


class KeptMasks:
    """The blocks' kept masks, as completion walks back through them (``complete_pruned``).

    A block held only on disk keeps its mask in its record: the first read of it is
    remembered (one bool per token seen), so later questions do not read the record again.
    """

    def __init__(self) -> None:
        self._from_disk: dict[int, torch.Tensor] = {}

    def before(self, memory: BlockMemory, held: dict[int, BlockMeta], block_id: int):
        """``(id, kept mask)`` of the blocks before ``block_id``, newest first, up to the first
        one no longer held (its tokens are gone, and nothing older is a reference)."""
        expected = block_id - 1
        while expected in held:
            yield expected, self._mask(memory, held[expected])
            expected -= 1

    def _mask(self, memory: BlockMemory, meta: BlockMeta) -> torch.Tensor:
        if meta.kept is not None:
            return meta.kept.cpu()
        if meta.id not in self._from_disk:
            disk = memory.disk
            if disk is not None and meta.id in disk.held:
                stored = disk.meta(meta.id)
            else:  # another persistent tier (a cluster's shared store): the whole block
                stored = memory.load([meta.id])[0].meta
            self._from_disk[meta.id] = stored.kept.cpu()
        return self._from_disk[meta.id]


def complete_pruned(
    backend: Backend,
    memory: BlockMemory,
    blocks: dict[int, Block],
    spare_tokens: int | None,
    masks: KeptMasks | None = None,
) -> dict[int, Block]:
    """``blocks`` with each pruned one completed by its dropped tokens' references (the last
    kept token at the same grid position, ``memory.pruning.find_references``), when the
    block holding a reference is not attended already: the reference's KV, re-rotated to
    the dropped token's position, so the block shows its whole frame.

    At most ``REFERENCE_BLOCKS`` blocks are loaded for it, and at most ``spare_tokens``
    tokens added (None: no limit), the newest blocks completed first; a block that does
    not fit stays as stored. Without pruning nothing changes. ``masks``: the session's
    ``KeptMasks`` (a fresh one reads every disk-held mask it needs)."""
    pruned = [b for b in sorted(blocks, reverse=True) if blocks[b].meta.kept is not None]
    pruned = [b for b in pruned if not bool(blocks[b].meta.kept.all())]
    if not pruned:
        return blocks
    masks = masks or KeptMasks()
    held = {m.id: m for m in memory.metas()}
    attended = torch.tensor(sorted(blocks), dtype=torch.long)
    references = {}
    for b in pruned:
        meta = blocks[b].meta
        found = find_references(b, meta.kept.cpu(), _per_patch(backend, meta), masks.before(memory, held, b))
        found[:, torch.isin(found[0], attended)] = -1  # in the context already
        references[b] = found
    wanted: Counter[int] = Counter()
    for found in references.values():
        wanted.update(found[0][found[0] >= 0].tolist())
    sources = sorted(wanted, key=lambda s: (-wanted[s], -s))[:REFERENCE_BLOCKS]
    spare = math.inf if spare_tokens is None else spare_tokens
    for b in pruned:  # newest first
        found = references[b]
        found[:, ~torch.isin(found[0], torch.tensor(sources, dtype=torch.long))] = -1
        adds = int((found[0] >= 0).sum())
        if adds > spare:
            found[:] = -1  # does not fit the question's budget: answered as stored
        else:
            spare -= adds
    used = sorted({s for found in references.values() for s in found[0][found[0] >= 0].tolist()})
    if not used:
        return blocks
    loaded = {x.id: x for x in memory.load(used)}
    out = dict(blocks)
    for b in pruned:
        if bool((references[b][0] >= 0).any()):
            out[b] = _completed(backend, blocks[b], references[b], loaded)
    return out


def _per_patch(backend: Backend, meta: BlockMeta) -> int:
    """Tokens of one temporal patch of a block (its chunk holds ``frames`` padded to whole patches)."""
    return meta.tokens_seen // -(-meta.frames // backend.frame_multiple)


def _completed(backend: Backend, block: Block, found: torch.Tensor, sources: dict[int, Block]) -> Block:
    """``block`` with the references ``found`` ([2, tokens seen]) at its dropped tokens' slots."""
    meta = block.meta
    seen = meta.kept.numel()
    per_patch = _per_patch(backend, meta)
    kept_slots = meta.kept.cpu().nonzero().squeeze(-1)
    parts = [(kept_slots, block.layers)]
    positions = torch.zeros(meta.positions.shape[0], seen, dtype=meta.positions.dtype)
    positions[:, kept_slots] = meta.positions
    for source_id in found[0].unique().tolist():
        if source_id < 0:
            continue
        slots = (found[0] == source_id).nonzero().squeeze(-1)
        source = sources[source_id]
        index = found[1, slots]
        old = source.meta.positions[:, index]
        new, placeable = _dropped_positions(backend, meta, kept_slots, slots, old, per_patch)
        slots, index, old, new = slots[placeable], index[placeable], old[:, placeable], new[:, placeable]
        if not slots.numel():
            continue
        layers = [(k[:, index.to(k.device)], v[:, index.to(v.device)]) for k, v in source.layers]
        parts.append((slots, backend.reposition_keys(layers, old, new)))
        positions[:, slots] = new
    present = torch.zeros(seen, dtype=torch.bool)
    for slots, _ in parts:
        present[slots] = True
    completed = replace(meta, positions=positions[:, present], kept=present)
    return Block(meta=completed, layers=tuple(scatter_tokens(seen, parts)))


def _dropped_positions(
    backend: Backend,
    meta: BlockMeta,
    kept_slots: torch.Tensor,
    slots: torch.Tensor,
    reference: torch.Tensor,
    per_patch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions the dropped tokens at ``slots`` had in the block's chunk, and which of
    them can be placed. A chunk's positions follow from where its kept tokens are:
    1-D positions (LLaVA-OneVision) run over the chunk's tokens in order; Qwen2.5-VL's
    (time, row, column) take the time of the slot's temporal patch from a kept token of
    that patch, the row and column from the reference (the same grid cell)."""
    if meta.positions.shape[0] == 1:
        first = int(meta.positions[0, 0]) - int(kept_slots[0])
        return (first + slots)[None], torch.ones(slots.numel(), dtype=torch.bool)
    times = torch.full((meta.kept.numel() // per_patch,), -1, dtype=meta.positions.dtype)
    times[kept_slots // per_patch] = meta.positions[0]
    time = times[slots // per_patch]
    return torch.cat([time[None], reference[1:]]), time >= 0


def contiguous_layout(
    backend: Backend, blocks: dict[int, Block], video_start: int, question_tokens: int
) -> tuple[dict[int, Block], torch.Tensor]:
    """``blocks`` re-rotated to consecutive positions from ``video_start`` (in id order,
    which is time order), and the positions of a question that follows them."""
    ids = sorted(blocks)
    moved, _, end = lay_out(backend, [blocks[b] for b in ids], video_start)
    return dict(zip(ids, moved, strict=True)), backend.text_positions(end, question_tokens)


def prefill(
    backend: Backend,
    sink: Sink,
    blocks: dict[int, Block],
    selection: Selection,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    room: int,
):
    """Prefill the question over each layer's context; returns the cache and the first logits.

    ``room``: slots preallocated past the context for the question and the answer tokens, so
    decoding writes into them instead of re-concatenating the whole context every token.
    """
    # the sink and each block written once, straight into the preallocated cache
    cache = backend.cache_of_parts(per_layer_parts(sink.kv, blocks, selection.layers), room)
    hidden = backend.forward(embeds, positions, cache)
    return cache, backend.logits(hidden[-1:])[0]


def _read_question(
    backend, memory, sink, plan, pending, bound, video_start, embeds, positions
) -> torch.Tensor:
    """Retrieval's first pass: the question's queries, read over the sink and the encoding
    window (``query_context="window"``) or the sink alone, re-based past the position bound."""
    window = _window(memory, plan.encode_window, pending) if plan.query_context == "window" else []
    if bound.reaches(positions, *(b.meta.positions for b in window)):
        window, _, end = lay_out(backend, window, video_start)
        positions = backend.text_positions(end, embeds.shape[0])
    bound.record(positions, *(b.meta.positions for b in window), what="reading the question")
    return retrieval_queries(backend, sink, window, embeds, positions)


def _window(memory: BlockMemory, frames: int, pending: Block | None) -> list[Block]:
    """The encoding window as a question reads it: the pending chunk is its newest block."""
    if pending is None:
        return memory.window(frames)
    if pending.meta.frames > frames:
        return []  # as with stored blocks, one that overflows the window leaves out all older
    return [*memory.window(frames - pending.meta.frames), pending]


@dataclass
class Prefilled:
    """A question prefilled over its context: what decoding it needs, and what it attended."""

    cache: object  # the question's private cache, filled by the prefill
    first_logits: torch.Tensor
    next_position: int  # where the first answer token goes
    refs: list[BlockRef]  # the blocks attended, with the tier each was read from
    selection: Selection
    started: float  # perf_counter when the answer started (after any wait for frames)


def prefill_answer(
    stream: AnswerStream,
    *,
    backend: Backend,
    memory: BlockMemory,
    sink: Sink,
    system_prompt: str,
    video_start: int,
    plan: AnswerPlan,
    pending: Block | None,
    bound: PositionBound,
    masks: KeptMasks | None = None,
) -> Prefilled:
    """Steps 1-4 for ``stream.question`` by ``plan``; the caller holds the device lock, so
    the blocks (and ``pending``, the chunk being filled, encoded for this question only:
    the newest block it may attend) cannot change under it. Fills ``stream.selection``.
    Positions stay below ``bound``: past it, the attended blocks are re-based after the sink.
    ``masks``: the session's ``KeptMasks``, for completing pruned blocks."""
    started = time.perf_counter()
    embeds, positions = question_inputs(backend, system_prompt, stream.question, stream.position)
    queries = None
    if plan.retrieves:  # read when retrieval runs, at most once (a budget that fits needs none)
        queries = functools.cache(
            partial(
                _read_question, backend, memory, sink, plan, pending, bound, video_start, embeds, positions
            )
        )
    fixed = len(sink.ids) + embeds.shape[0] + plan.sampling.max_new_tokens  # what any context holds
    stream.selection = selection = memory.select(plan, queries, pending.meta if pending else None, fixed)
    stored = [b for b in selection.union if pending is None or b != pending.id]
    blocks = {b.id: b for b in memory.load(stored)}  # one batched load from the tiers
    tiers = {b: memory.tier_of(b) for b in blocks}
    if pending is not None and pending.id in selection.union:
        blocks[pending.id], tiers[pending.id] = pending, "pending"
    held = sum(b.meta.tokens for b in blocks.values())
    spare = None if plan.answer_tokens is None else plan.answer_tokens - fixed - held
    blocks = complete_pruned(backend, memory, blocks, spare, masks)
    answer = plan.sampling.max_new_tokens  # decoded after the question, one position each
    held = [b.meta.positions for b in blocks.values()]
    if (plan.positions == "contiguous" and blocks) or bound.reaches(positions, *held, extra=answer):
        blocks, positions = contiguous_layout(backend, blocks, video_start, embeds.shape[0])
    bound.record(positions, *(b.meta.positions for b in blocks.values()), extra=answer, what="this question")
    cache, first_logits = prefill(
        backend,
        sink,
        blocks,
        selection,
        embeds,
        positions,
        room=embeds.shape[0] + plan.sampling.max_new_tokens,
    )
    refs = [BlockRef(b, m.meta.t_start, m.meta.t_end, m.meta.tokens, tiers[b]) for b, m in blocks.items()]
    return Prefilled(cache, first_logits, int(positions[0, -1]) + 1, refs, selection, started)


def decode_answer(
    stream: AnswerStream,
    ready: Prefilled,
    *,
    backend: Backend,
    plan: AnswerPlan,
    lock: AbstractContextManager,
    wait_s: float = 0.0,
    frames_dropped: int = 0,
) -> Iterator[str]:
    """Step 5: yield the answer's text deltas (``lock`` held around each token's forward:
    the session passes its device lock's answer class), then fill
    ``stream.answer``. ``wait_s`` and ``frames_dropped`` are what the question's wait for
    its frames took and found (``Answer``)."""
    ttft = time.perf_counter() - ready.started
    streamer = TextStreamer(backend.tokenizer)
    tokens: list[int] = []
    steps = decode_tokens(
        backend, ready.cache, ready.first_logits, ready.next_position, plan.sampling, lambda: lock
    )
    for token in steps:
        tokens.append(token)
        delta = streamer.push(token)
        if delta:
            yield delta
    tail = streamer.finish()
    if tail:
        yield tail
    total = time.perf_counter() - ready.started
    context_tokens, context_bytes = cache_footprint(ready.cache)
    stream.answer = Answer(
        question=stream.question,
        text=streamer.text,
        asked_at=stream.asked_at,
        blocks=ready.refs,
        timings=Timings(
            ttft_s=ttft,
            total_s=total,
            prefill_s=ttft,
            decode_s=total - ttft,
            new_tokens=len(tokens),
            wait_s=wait_s,
        ),
        token_ids=tokens,
        finish_reason="length" if len(tokens) == plan.sampling.max_new_tokens else "stop",
        mode=ready.selection.mode,
        left_out=ready.selection.left_out,
        context_tokens=context_tokens,
        context_bytes=context_bytes,
        frames_dropped=frames_dropped,
    )
