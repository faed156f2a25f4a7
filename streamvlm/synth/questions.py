"""Questions about a ``World`` whose answers follow from its event list alone.

Families (answer format in brackets):

- ``colour_of_shape``: "What colour was the circle?" [a colour word]. Asked only when
  that shape appeared exactly once by ``asked_at``.
- ``shape_of_colour``: "What shape was the red one?" [a shape word]. Only when that
  colour appeared exactly once.
- ``which_first``: "Which appeared first, the red circle or the blue square?"
  ["<colour> <shape>", e.g. "red circle"]. Only when each named object is the only one
  of its colour and shape so far and they did not appear on the same frame.
- ``count_colour``: "How many red objects appeared?" [one digit, "0".."9"]. Only when
  the count is at most 9. Colours that appeared, plus one that did not (so "0" is asked
  sometimes, not most of the time).
- ``now``: "What is on screen now?" ["<colour> <shape>" or "nothing"], about the last
  frame at or before ``asked_at``. Only when at most one object is on it.
- ``digit_of_shape``: "What digit did the circle show?" [a digit "0".."9"]. Only when
  that shape appeared exactly once and showed a digit.

"By ``asked_at``" means on frames at or before ``asked_at`` (what a stream has seen when
the question comes). Each ``Question`` carries the ids of the events it is about and
``distance = asked_at - t_end`` of the oldest of them (``t_end`` is the first time the
object was no longer on screen; a negative distance means it is still on screen).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError
from .events import Event
from .vocab import COLOURS, DIGITS, SHAPES

# Paraphrases per family. Slots: {shape}, {colour}, {a} / {b} ("<colour> <shape>").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour_of_shape": (
        "What colour was the {shape}?",
        "Which colour was the {shape}?",
        "What colour did the {shape} have?",
    ),
    "shape_of_colour": (
        "What shape was the {colour} one?",
        "What shape was the {colour} object?",
        "Which shape was {colour}?",
    ),
    "which_first": (
        "Which appeared first, the {a} or the {b}?",
        "Which came first, the {a} or the {b}?",
        "Did the {a} or the {b} appear first?",
    ),
    "count_colour": (
        "How many {colour} objects appeared?",
        "How many {colour} objects were there?",
        "Count the {colour} objects.",
    ),
    "now": (
        "What is on screen now?",
        "What do you see now?",
        "What is visible right now?",
    ),
    "digit_of_shape": (
        "What digit did the {shape} show?",
        "Which number was on the {shape}?",
        "What number did the {shape} show?",
    ),
}
FAMILIES: tuple[str, ...] = tuple(TEMPLATES)
NOTHING = "nothing"
MAX_COUNT = 9  # counts are answered with one digit

_WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-case word-level tokens: runs of letters, runs of digits, single punctuation."""
    return _WORD.findall(text.lower())


def _vocabulary() -> list[str]:
    vocab: set[str] = {NOTHING, *SHAPES, *COLOURS, *(str(d) for d in DIGITS)}
    for templates in TEMPLATES.values():
        for t in templates:
            vocab.update(words(re.sub(r"\{\w+\}", " ", t)))
    return sorted(vocab)


VOCABULARY: list[str] = _vocabulary()
"""Every word of every question text and answer (see ``words``), sorted."""


@dataclass(frozen=True)
class Question:
    """A question, its answer and what it is about.

    ``asked_at``: stream time it is asked at; ``event_ids``: the events the answer
    depends on (empty for "nothing" and zero counts); ``distance``: ``asked_at`` minus
    the ``t_end`` of the oldest of them, ``None`` when there are none.
    """

    family: str
    text: str
    answer: str
    asked_at: float
    event_ids: tuple[int, ...]
    distance: float | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["event_ids"] = list(self.event_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Question:
        return cls(
            family=d["family"],
            text=d["text"],
            answer=d["answer"],
            asked_at=float(d["asked_at"]),
            event_ids=tuple(int(i) for i in d["event_ids"]),
            distance=None if d["distance"] is None else float(d["distance"]),
        )


@dataclass(frozen=True)
class _Candidate:
    family: str
    slots: dict[str, str]
    answer: str
    events: tuple[Event, ...]


def seen_events(world, asked_at: float) -> list[Event]:
    """Events shown on at least one frame at or before ``asked_at``."""
    last = world.frame_at(asked_at)
    return [e for e in world.events if e.frame_start <= last]


def candidates(world, asked_at: float, families: Sequence[str] = FAMILIES) -> list[_Candidate]:
    """Every unambiguous question of ``families`` at ``asked_at`` (before paraphrasing)."""
    _check_families(families)
    seen = seen_events(world, asked_at)
    by_shape = Counter(e.shape for e in seen)
    by_colour = Counter(e.colour for e in seen)
    by_name = Counter((e.colour, e.shape) for e in seen)
    out: list[_Candidate] = []
    for family in families:
        if family == "colour_of_shape":
            out += [
                _Candidate(family, {"shape": e.shape}, e.colour, (e,)) for e in seen if by_shape[e.shape] == 1
            ]
        elif family == "shape_of_colour":
            out += [
                _Candidate(family, {"colour": e.colour}, e.shape, (e,))
                for e in seen
                if by_colour[e.colour] == 1
            ]
        elif family == "digit_of_shape":
            out += [
                _Candidate(family, {"shape": e.shape}, str(e.digit), (e,))
                for e in seen
                if by_shape[e.shape] == 1 and e.digit is not None
            ]
        elif family == "which_first":
            unique = [e for e in seen if by_name[(e.colour, e.shape)] == 1]
            for i, a in enumerate(unique):
                for b in unique[i + 1 :]:
                    if a.frame_start != b.frame_start:
                        first = min(a, b, key=lambda e: e.frame_start)
                        out.append(_Candidate(family, {"a": a.name, "b": b.name}, first.name, (a, b)))
        elif family == "count_colour":
            for colour in COLOURS:
                n = by_colour[colour]
                if 0 < n <= MAX_COUNT:
                    evs = tuple(e for e in seen if e.colour == colour)
                    out.append(_Candidate(family, {"colour": colour}, str(n), evs))
            absent = [c for c in COLOURS if by_colour[c] == 0]
            if absent:
                # One absent colour, picked deterministically from the world's seed and
                # the seen events, so that candidates() stays a pure function of the
                # world and asked_at. The seed spreads the pick over every colour: from
                # the event count alone, "0" was almost always the answer for green or
                # blue and never for purple, a prior a model could learn in place of
                # looking.
                colour = absent[(world.seed + len(seen)) % len(absent)]
                out.append(_Candidate(family, {"colour": colour}, "0", ()))
        elif family == "now":
            on = world.on_screen(world.frame_at(asked_at))
            if len(on) == 0:
                out.append(_Candidate(family, {}, NOTHING, ()))
            elif len(on) == 1:
                out.append(_Candidate(family, {}, on[0].name, (on[0],)))
    return out


def make_question(c: _Candidate, asked_at: float, rng: np.random.Generator) -> Question:
    """Paraphrase a candidate with a random template of its family."""
    templates = TEMPLATES[c.family]
    slots = dict(c.slots)
    if c.family == "which_first" and rng.random() < 0.5:
        slots["a"], slots["b"] = slots["b"], slots["a"]  # the answer is not always named first
    text = templates[rng.integers(len(templates))].format(**slots)
    distance = None
    if c.events:
        distance = round(asked_at - min(e.t_end for e in c.events), 6)
    return Question(c.family, text, c.answer, float(asked_at), tuple(e.id for e in c.events), distance)


def make_questions(
    world,
    asked_at: float,
    rng: np.random.Generator | int,
    families: Sequence[str] = FAMILIES,
    n: int | None = None,
) -> list[Question]:
    """Questions about ``world`` asked at stream time ``asked_at``.

    With ``n=None``, every unambiguous question (one paraphrase each); otherwise up to
    ``n`` distinct ones, each drawn by picking a family uniformly among those that still
    have questions, then a question of it uniformly (so rare families are not drowned by
    ``count_colour``/``which_first``, which have many).
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    if asked_at < 0:
        raise ConfigError(f"asked_at must be >= 0 s, got {asked_at}")
    pool = candidates(world, asked_at, families)
    if n is None:
        return [make_question(c, asked_at, rng) for c in pool]
    by_family: dict[str, list[_Candidate]] = {}
    for c in pool:
        by_family.setdefault(c.family, []).append(c)
    out: list[Question] = []
    while by_family and len(out) < n:
        names = [f for f in families if f in by_family]
        family = names[rng.integers(len(names))]
        group = by_family[family]
        out.append(make_question(group.pop(int(rng.integers(len(group)))), asked_at, rng))
        if not group:
            del by_family[family]
    return out


def sample_questions(
    world, n: int, rng: np.random.Generator | int, families: Sequence[str] = FAMILIES
) -> list[Question]:
    """``n`` questions spread over the stream: about half asked at the end, the rest at
    random frame times; sorted by ``asked_at``. Fewer when the world offers fewer."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    out: list[Question] = []
    seen: set[tuple[str, float]] = set()
    for k in range(4 * n):
        if len(out) >= n:
            break
        asked_at = world.end_time if k % 2 == 0 else world.frame_time(int(rng.integers(world.n_frames)))
        for q in make_questions(world, asked_at, rng, families, n=1):
            if (q.text, q.asked_at) not in seen:
                seen.add((q.text, q.asked_at))
                out.append(q)
    return sorted(out, key=lambda q: q.asked_at)


def _check_families(families: Sequence[str]) -> None:
    unknown = [f for f in families if f not in TEMPLATES]
    if unknown or not families:
        raise ConfigError(f"unknown question families {unknown}; use some of {', '.join(FAMILIES)}")
