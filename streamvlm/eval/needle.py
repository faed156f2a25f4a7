"""``streamvlm eval needle``: does the memory keep what a question needs?

Needle streams of the synthetic world (``synth.make_needle_stream``) of several lengths
stream through one session each; questions about single *needle* objects are asked at
the end and mid-stream, about needles at controlled distances in the past. Every
question is answered, in the same run, by each configuration:

- ``plain``: transformers ``generate()`` over every frame so far, as a user of
  transformers would write it (only up to ``plain_max_frames``: its cost grows with the
  stream);
- ``lossless``: the session attending to every block;
- ``top<K>``: retrieval of ``K`` blocks (plus the recent window), block positions as
  stored; ``top<K>-contiguous``: the same, re-positioned next to the question;
  ``-w<N>`` after either: the answer sees only the newest ``N`` frames of the window
  besides the retrieved blocks (``MemoryConfig.answer_window``), e.g. ``top4-contiguous-w2``.

These only change how a question is answered, so they share one session per stream.
Suffixes change what a session *stores*, and each distinct storage gets a session of its
own over the same stream: ``+prune<T>`` prunes visual tokens at cosine threshold ``T``
(``docs/pruning.md``), ``+<codec>`` stores blocks outside the device tier with a KV codec
(``docs/quantization.md``); the device tier then holds just the encoding window, so
every older block a question reads has been through the codec. E.g.
``top4-contiguous+prune0.95+vidkv``.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from ..models.bundled import TINY_SYNTH
from ..registry import BLOCK_CODECS

# Needle distances (seconds before the question) tried at every length; those that fit.
DISTANCES: tuple[float, ...] = (4, 12, 40, 150, 600, 2500)
NEEDLE_SECONDS = 4.0
MAX_NEEDLES = 5  # one per shape (and colour), so every needle question has one answer
# Distance bins of the report, in seconds: upper edges (the last bin is open).
DISTANCE_BINS: tuple[float, ...] = (16, 64, 256, 1024)
# The shortest stream the nearest needle distance fits in (see distances_for).
MIN_LENGTH = int(DISTANCES[0] + NEEDLE_SECONDS) + 2

DEFAULT = "default"  # the configuration a user gets without options
_CONFIG = re.compile(r"^(plain|lossless|top(\d+))(-contiguous)?(?:-w(\d+))?((?:\+[a-z0-9.\-]+)*)$")
_PRUNE = re.compile(r"^prune(\d*\.?\d+)$")


@dataclass(frozen=True)
class AnswerConfig:
    """How one configuration answers, and over what storage: parsed from names like
    ``top4-contiguous`` or ``lossless+prune0.95+vidkv``."""

    name: str
    plain: bool = False
    top_k: int | None = None
    positions: str = "original"
    answer_window: int | None = None  # frames of the window every retrieval answer sees
    prune: float | None = None  # the session's prune_threshold
    codec: str | None = None  # the session's host and disk codec
    defaults: bool = False  # ``default``: a session of ``engine.memory()`` asked with no options

    @property
    def store(self) -> tuple:
        """What the session stores; configurations with the same store share a session."""
        return (DEFAULT,) if self.defaults else (self.prune, self.codec)

    @property
    def reads_blocks(self) -> bool:
        """Whether it may attend a subset of the blocks (so whether the needle was among them counts)."""
        return self.top_k is not None or self.defaults

    @classmethod
    def parse(cls, name: str) -> AnswerConfig:
        if name == DEFAULT:
            return cls(name=name, defaults=True)
        m = _CONFIG.match(name)
        if (
            not m
            or (m.group(1) == "plain" and (m.group(3) or m.group(5)))
            or (m.group(4) is not None and m.group(2) is None)
        ):
            raise ConfigError(
                f"unknown configuration {name!r}; use default, plain, lossless, top<K> or top<K>-contiguous, "
                "top<K> optionally with -w<N> (answer window), any but plain with +prune<T> and +<codec> "
                "(e.g. plain,lossless,top4-contiguous-w2,lossless+prune0.95+vidkv)"
            )
        top_k = int(m.group(2)) if m.group(2) else None
        if top_k is not None and top_k < 1:
            raise ConfigError(f"{name}: top_k must be >= 1")
        prune, codec = _storage(name, [x for x in m.group(5).split("+") if x])
        return cls(
            name=name,
            plain=m.group(1) == "plain",
            top_k=top_k,
            positions="contiguous" if m.group(3) else "original",
            answer_window=int(m.group(4)) if m.group(4) is not None else None,
            prune=prune,
            codec=codec,
        )


def _storage(name: str, parts: list[str]) -> tuple[float | None, str | None]:
    """``(prune threshold, codec)`` from a configuration's ``+`` suffixes."""
    prune = codec = None
    for part in parts:
        m = _PRUNE.match(part)
        if m and prune is None:
            prune = float(m.group(1))
        elif part in BLOCK_CODECS and part != "identity" and codec is None:
            codec = BLOCK_CODECS.canonical(part)  # an old name (vidkv-ref) runs as the current one
        else:
            raise ConfigError(
                f"{name}: {part!r} is not prune<T> (e.g. prune0.95) or a codec "
                f"({', '.join(BLOCK_CODECS.names())}), or it is given twice"
            )
    return prune, codec


@dataclass
class NeedleEvalConfig:
    model: str = TINY_SYNTH
    lengths: tuple[int, ...] = (16, 64, 256, 1024, 3600)  # sampled frames (1 fps: seconds)
    streams: int = 4  # needle streams per length at least (seeds seed, seed + 1, ...) ...
    min_questions: int = 24  # ... and more until a length has this many questions
    configs: tuple[str, ...] = (
        "plain",
        "lossless",
        "top4-contiguous",
        "top2-contiguous",
        "top2-contiguous-w2",
        "top1-contiguous-w0",
    )
    window: int = 16  # the session's encoding window and the recent frames every answer sees
    # MemoryConfig.query_context of every session: the bundled model's retrieval was
    # trained on the question read alone (docs/training.md)
    query_context: str = "sink"
    max_position_span: int | None = None  # MemoryConfig.max_position_span (None: the model's)
    mid_questions: int = 1  # mid-stream ask times per stream (besides the end)
    distractors_per_minute: float = 3.0
    plain_max_frames: int = 256
    max_new_tokens: int = 4
    seed: int = 0
    device: str | None = None
    dtype: str | None = None

    def answer_configs(self) -> list[AnswerConfig]:
        return [AnswerConfig.parse(c) for c in self.configs]


@dataclass
class Outcome:
    """One question answered by one configuration."""

    length: int
    stream: int
    config: str
    family: str
    question: str
    expected: str
    answer: str
    correct: bool
    distance: float
    asked_at: float
    ttft_s: float
    # retrieval configurations: did the blocks attended include a frame of the needle?
    # (the recent window counts: a needle in it is in the context) None for the others
    needle_retrieved: bool | None = None
    # tokens the answer's context held (sink, blocks, question, answer; a pruned block answered
    # alone counts the references it was completed with): what the question cost the device
    context_tokens: int | None = None


@dataclass
class StreamRecord:
    length: int
    stream: int
    needles: int
    questions: int
    bytes_stored: int  # session KV bytes (all tiers) at the end of the stream
    encode_s: float
    store: str = "full"  # what the session stored: "full", or e.g. "prune0.95+vidkv"
    visual_tokens_seen: int = 0
    visual_tokens_kept: int = 0
    kv_bits_per_element: dict | None = None  # per tier, from session.stats()


@dataclass
class NeedleEvalResult:
    config: dict
    outcomes: list[Outcome] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)

    def accuracy(self, by: str = "length") -> dict[str, dict[str, dict]]:
        """``{config: {key: {"accuracy", "n"}}}`` with ``by`` one of ``length``, ``distance``,
        ``family``, ``length_distance`` (keys ``"<length>/<distance bin>"``)."""
        keys = {
            "length": lambda o: str(o.length),
            "distance": lambda o: distance_bin(o.distance),
            "family": lambda o: o.family,
            "length_distance": lambda o: f"{o.length}/{distance_bin(o.distance)}",
        }
        if by not in keys:
            raise ValueError(f"by must be one of {', '.join(keys)}, got {by!r}")
        groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for o in self.outcomes:
            key = keys[by](o)
            groups[o.config][key].append(o.correct)
        return {
            c: {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in per.items()}
            for c, per in groups.items()
        }

    def ttft(self) -> dict[str, dict[str, float]]:
        """Median time to first token, ``{config: {length: seconds}}``."""
        groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for o in self.outcomes:
            groups[o.config][str(o.length)].append(o.ttft_s)
        return {c: {k: statistics.median(v) for k, v in per.items()} for c, per in groups.items()}

    def hit_rate(self) -> dict[str, dict[str, dict]]:
        """Retrieval configurations: ``{config: {length: {"rate", "n"}}}``, the share of
        questions whose attended blocks held a frame of the needle."""
        groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for o in self.outcomes:
            if o.needle_retrieved is not None:
                groups[o.config][str(o.length)].append(o.needle_retrieved)
        return {
            c: {k: {"rate": sum(v) / len(v), "n": len(v)} for k, v in per.items()}
            for c, per in groups.items()
        }

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "needle_retrieved_by_length": self.hit_rate(),
            "accuracy_by_length": self.accuracy("length"),
            "accuracy_by_distance": self.accuracy("distance"),
            "accuracy_by_family": self.accuracy("family"),
            "accuracy_by_length_and_distance": self.accuracy("length_distance"),
            "median_ttft_s": self.ttft(),
            "streams": [asdict(s) for s in self.streams],
            "outcomes": [asdict(o) for o in self.outcomes],
        }


def distance_bin(distance: float) -> str:
    """The report's label for a distance in seconds, e.g. ``16-64s``."""
    lower = 0.0
    for edge in DISTANCE_BINS:
        if distance < edge:
            return f"{lower:g}-{edge:g}s"
        lower = edge
    return f">={lower:g}s"


def distances_for(length: int) -> tuple[float, ...]:
    """The needle distances that fit a stream of ``length`` frames at 1 fps (at most ``MAX_NEEDLES``)."""
    fit = [d for d in DISTANCES if d + NEEDLE_SECONDS + 1 <= length - 1]
    return tuple(fit[-MAX_NEEDLES:])


def answers_match(answer: str, expected: str) -> bool:
    """Exact match of the answer's words (case and punctuation aside)."""
    from ..synth import words

    return [w for w in words(answer) if w.isalnum()] == [w for w in words(expected) if w.isalnum()]


def distance_labels() -> list[str]:
    """Every distance bin's label, nearest first."""
    return [distance_bin(e - 1) for e in DISTANCE_BINS] + [distance_bin(DISTANCE_BINS[-1])]


def _cell(cell: dict | None) -> str:
    return f"{cell['accuracy']:10.2f} ({cell['n']:3d})" if cell else f"{'-':>16}"


def run_needle_eval(config: NeedleEvalConfig, log=print) -> NeedleEvalResult:
    """Stream each needle stream once; answer each of its questions with every configuration."""
    from ..runtime.engine import StreamVLM

    answer_configs = config.answer_configs()
    lengths = sorted(set(config.lengths))
    if not lengths or lengths[0] < MIN_LENGTH:
        raise ConfigError(
            f"lengths must be >= {MIN_LENGTH} frames (the nearest needle must fit), got {lengths}"
        )
    engine = StreamVLM.from_pretrained(
        config.model, device=config.device, dtype=config.dtype, seed=config.seed
    )
    result = NeedleEvalResult(config=asdict(config))
    log("accuracy (questions) per stream length:")
    log(header(answer_configs))
    for length in lengths:
        asked = streams = 0
        while streams < config.streams or asked < config.min_questions:
            asked += _run_stream(engine, config, answer_configs, length, config.seed + streams, result)
            streams += 1
        log(_length_row(result, length, answer_configs))
    return result


def _run_stream(engine, config, answer_configs, length, seed, result) -> int:
    """Stream one needle stream, answer its questions with every configuration; return how many."""
    from ..synth import make_needle_stream

    distances = distances_for(length)
    needle = make_needle_stream(
        seed,
        float(length),
        distances,
        mid_questions=config.mid_questions,
        distractors_per_minute=config.distractors_per_minute,
        needle_seconds=NEEDLE_SECONDS,
    )
    world = needle.world
    pending = sorted(needle.questions, key=lambda q: q.asked_at)
    by_frame: dict[int, list] = defaultdict(list)
    for q in pending:
        by_frame[world.frame_at(q.asked_at)].append(q)
    stores: dict[tuple, list[AnswerConfig]] = defaultdict(list)
    for ac in answer_configs:
        stores[ac.store].append(ac)
    for store, configs in stores.items():
        with tempfile.TemporaryDirectory(prefix="streamvlm-needle-") as tmp:
            session = engine.new_session(memory=_store_memory(engine, world, config, store, tmp))
            encode_s = 0.0
            for i in range(world.n_frames):
                started = time.perf_counter()
                session.add_frame(world.render(i), world.frame_time(i))
                encode_s += time.perf_counter() - started
                for q in by_frame.get(i, ()):
                    for ac in configs:
                        if ac.plain and i + 1 > config.plain_max_frames:
                            continue
                        text, ttft, blocks, context = _answer(
                            engine, session, world, i + 1, q.text, ac, config
                        )
                        result.outcomes.append(
                            Outcome(
                                length=length,
                                stream=seed,
                                config=ac.name,
                                family=q.family,
                                question=q.text,
                                expected=q.answer,
                                answer=text,
                                correct=answers_match(text, q.answer),
                                distance=q.distance,
                                asked_at=q.asked_at,
                                ttft_s=ttft,
                                needle_retrieved=_holds_needle(world, q, blocks) if ac.reads_blocks else None,
                                context_tokens=context,
                            )
                        )
            stats = session.stats()
            result.streams.append(
                StreamRecord(
                    length=length,
                    stream=seed,
                    needles=len(needle.needles),
                    questions=len(pending),
                    bytes_stored=sum(stats.bytes_per_tier.values()),
                    encode_s=encode_s,
                    store=store_name(store),
                    visual_tokens_seen=stats.visual_tokens_seen,
                    visual_tokens_kept=stats.visual_tokens_kept,
                    kv_bits_per_element=stats.kv_bits_per_element,
                )
            )
            session.close()
    return len(pending)


def store_name(store: tuple) -> str:
    """``full``, ``default`` or the storage suffixes, e.g. ``prune0.95+vidkv``."""
    if store == (DEFAULT,):
        return DEFAULT
    prune, codec = store
    parts = ([f"prune{prune:g}"] if prune is not None else []) + ([codec] if codec else [])
    return "+".join(parts) or "full"


def _store_memory(engine, world, config: NeedleEvalConfig, store: tuple, disk_dir: str):
    """The session options for one storage. With a codec the device tier holds exactly the
    encoding window (at full precision, as it always does), so every block a question reads
    from further back comes from the codec. ``default``: what ``watch`` gives, the model's
    recommendation over ``MemoryConfig``'s defaults (``engine.memory()``; the span aside)."""
    from ..config import MemoryConfig

    if store == (DEFAULT,):
        return engine.memory(max_position_span=config.max_position_span)
    prune, codec = store
    # no codec named: full precision everywhere (MemoryConfig's default stores vidkv)
    window = config.window
    options = dict(
        window=window,
        query_context=config.query_context,
        max_position_span=config.max_position_span,
        disk_dir=disk_dir,
        prune_threshold=prune,
        host_codec="identity",
        disk_codec="identity",
    )
    if codec is not None:
        backend = engine.backend
        chunk = backend.default_chunk_frames
        tokens = backend.encode_frames(
            [world.render(0)] * chunk, [0.0] * chunk, video_start=0, next_position=0
        ).embeds.shape[0]
        block_bytes = tokens * backend.kv_bytes_per_token
        options.update(host_codec=codec, disk_codec=codec, device_bytes=-(-window // chunk) * block_bytes)
        # that device budget only routes older blocks through the codec: questions keep the
        # budget a full-size device gives (the span), so every storage answers over the same blocks
        options.update(answer_tokens=config.max_position_span or backend.max_positions)
    return MemoryConfig(**options)


def _holds_needle(world, question, blocks) -> bool:
    """Whether any attended block overlaps (in stream time) a frame of the question's events."""
    for event_id in question.event_ids:
        event = world.events[event_id]
        first, last = world.frame_time(event.frame_start), world.frame_time(event.frame_end - 1)
        if any(b.t_start <= last and b.t_end >= first for b in blocks):
            return True
    return False


def _answer(
    engine, session, world, frames, question, ac: AnswerConfig, config
) -> tuple[str, float, list, int | None]:
    if ac.plain:
        from .baseline import generate_over_all_frames

        run = generate_over_all_frames(
            engine.backend,
            session.system_prompt,
            list(world.frames(0, frames)),
            world.fps,
            question,
            max_new_tokens=config.max_new_tokens,
        )
        return run["text"], run["ttft_s"], [], None
    answer = session.ask(question, max_new_tokens=config.max_new_tokens, **question_options(ac))
    return answer.text, answer.timings.ttft_s, answer.blocks, answer.context_tokens


def question_options(ac: AnswerConfig) -> dict:
    """What ``ac`` passes to ``Session.ask`` besides the sampling options (nothing for ``default``)."""
    if ac.defaults:
        return {}
    return dict(top_k=ac.top_k, answer_window=ac.answer_window, positions=ac.positions)


def header(answer_configs: list[AnswerConfig]) -> str:
    return f"{'frames':>7} " + " ".join(f"{c.name:>16}" for c in answer_configs)


def _length_row(result: NeedleEvalResult, length: int, answer_configs) -> str:
    acc = result.accuracy("length")
    return f"{length:7d} " + " ".join(_cell(acc.get(c.name, {}).get(str(length))) for c in answer_configs)


def distance_table(result: NeedleEvalResult, answer_configs) -> str:
    """Accuracy per distance bin and configuration, all lengths together."""
    acc = result.accuracy("distance")
    lines = [f"{'distance':>9} " + " ".join(f"{c.name:>16}" for c in answer_configs)]
    for b in distance_labels():
        lines.append(f"{b:>9} " + " ".join(_cell(acc.get(c.name, {}).get(b)) for c in answer_configs))
    return "\n".join(lines)


def plot(result: NeedleEvalResult, path: str) -> None:
    """A PNG: accuracy against stream length, and against needle distance, per configuration."""
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: pip install 'streamvlm[bench]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_length, by_distance = result.accuracy("length"), result.accuracy("distance")
    bins = distance_labels()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in result.config["configs"]:
        per = by_length.get(name, {})
        xs = sorted(int(k) for k in per)
        axes[0].plot(xs, [per[str(x)]["accuracy"] for x in xs], "o-", label=name)
        per = by_distance.get(name, {})
        present = [b for b in bins if b in per]
        axes[1].plot(present, [per[b]["accuracy"] for b in present], "o-", label=name)
    axes[0].set(
        title="needle accuracy against stream length",
        xlabel="stream length (frames, 1 fps)",
        ylabel="accuracy",
        xscale="log",
        ylim=(0, 1.02),
    )
    axes[1].set(title="needle accuracy against distance", xlabel="needle distance", ylim=(0, 1.02))
    axes[0].legend()
    fig.suptitle(f"streamvlm eval needle — {result.config['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
