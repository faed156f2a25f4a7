"""Synthetic video worlds with questions whose answers follow from their events.

A ``World`` is a deterministic stream (seeded) of drifting low-contrast backgrounds with
occasional scene cuts, and coloured shapes (some showing a digit) that appear, stay a few
seconds, maybe move, and leave; ``render(i)`` draws frame ``i`` in well under a
millisecond. ``make_questions`` asks unambiguous questions about it (answers computed
from the event list); ``make_clip_sample`` and ``make_needle_stream`` build training
clips and needle-in-a-haystack streams; ``write`` saves a video plus a JSON sidecar.

Used to train a tiny Qwen2.5-VL-architecture model on CPU and to measure recall over
long streams; ``VOCABULARY`` lists every word of every question and answer.
"""

from .events import Event
from .files import load, sidecar_path, write
from .questions import FAMILIES, TEMPLATES, VOCABULARY, Question, make_questions, sample_questions, words
from .tasks import NEEDLE_FAMILIES, ClipSample, NeedleStream, make_clip_sample, make_needle_stream
from .vocab import COLOUR_RGB, COLOURS, DIGITS, SHAPES
from .world import World

__all__ = [
    "COLOURS",
    "COLOUR_RGB",
    "DIGITS",
    "FAMILIES",
    "NEEDLE_FAMILIES",
    "SHAPES",
    "TEMPLATES",
    "VOCABULARY",
    "ClipSample",
    "Event",
    "NeedleStream",
    "Question",
    "World",
    "load",
    "make_clip_sample",
    "make_needle_stream",
    "make_questions",
    "sample_questions",
    "sidecar_path",
    "words",
    "write",
]
