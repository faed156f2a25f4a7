"""The models streamvlm knows by name, and what each can answer (no torch import).

A user who runs ``streamvlm watch`` on their own footage must learn at once that the
default model knows only the project's synthetic world, and that the toy and
real-geometry models answer nothing. ``model_card(name)`` says so in one line for every
named model; the CLI, the server's session info, the demo and ``streamvlm info`` print
it (``ModelCard.line()``). The names live here, the one place the CLI can read them
before torch is imported; ``check_model_name`` refuses a name that can name no model
there too, before a command loads anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

from ..errors import ModelNotFoundError

TINY_SYNTH = "streamvlm-tiny-synth"
TINY_QWEN = "tiny-qwen2.5-vl"
TINY_LLAVA = "tiny-llava-ov"
GEOM_QWEN_7B = "geom-qwen2.5-vl-7b"
GEOM_QWEN_3B = "geom-qwen2.5-vl-3b"
GEOM_LLAVA_05B = "geom-llava-ov-0.5b"
GEOM_LLAVA_7B = "geom-llava-ov-7b"

TINY_MODELS = (TINY_QWEN, TINY_LLAVA)
GEOMETRY_MODELS = (GEOM_QWEN_7B, GEOM_QWEN_3B, GEOM_LLAVA_05B, GEOM_LLAVA_7B)

# Kinds of model, as ``ModelCard.kind`` names them.
BUNDLED = "bundled"  # trained by the project, ships in the package
RANDOM = "random"  # random weights: for mechanics, answers are noise
CHECKPOINT = "checkpoint"  # a local directory or a hub id: a real model, as far as streamvlm knows

_SYNTH_LIMITS = (
    "knows only streamvlm's synthetic world (coloured shapes, some showing a digit): it answers "
    "what colour, shape or digit an object had and what is on screen now, in one word; which came "
    "first and how many of a colour only over short clips, not a long stream; on other footage "
    "its answers mean nothing"
)
_RANDOM_LIMITS = "random weights, for testing streamvlm's mechanics: its answers are noise"


@dataclass(frozen=True)
class ModelCard:
    """What streamvlm says about a model: its ``name``, ``kind`` (``bundled``, ``random``
    or ``checkpoint``) and ``can_answer``, one line on what its answers are worth
    (``None`` for a checkpoint streamvlm did not make: that is the model's own card)."""

    name: str
    kind: str
    can_answer: str | None
    about: str

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The one line a command prints before its answers: ``model NAME (KIND): CAN_ANSWER``
        for a model streamvlm made, ``model NAME`` for a checkpoint (its own card says more).
        A client rebuilds it from a server's JSON with ``ModelCard(**card).line()``."""
        if self.can_answer is None:
            return f"model {self.name}"
        return f"model {self.name} ({self.kind}): {self.can_answer}"


_CARDS: dict[str, ModelCard] = {
    TINY_SYNTH: ModelCard(
        TINY_SYNTH,
        BUNDLED,
        _SYNTH_LIMITS,
        "Qwen2.5-VL architecture, 1.9M parameters, trained by the project on its synthetic world",
    ),
    TINY_QWEN: ModelCard(TINY_QWEN, RANDOM, _RANDOM_LIMITS, "Qwen2.5-VL architecture at toy size"),
    TINY_LLAVA: ModelCard(TINY_LLAVA, RANDOM, _RANDOM_LIMITS, "LLaVA-OneVision architecture at toy size"),
    **{
        name: ModelCard(
            name,
            RANDOM,
            _RANDOM_LIMITS,
            f"{name.removeprefix('geom-')}'s per-layer sizes with 2 text layers, for memory and speed figures",
        )
        for name in GEOMETRY_MODELS
    },
}


def model_card(name: str) -> ModelCard:
    """The card of model ``name``: a named model's own, else a ``checkpoint`` card."""
    card = _CARDS.get(name)
    if card is not None:
        return card
    return ModelCard(name, CHECKPOINT, None, "a Qwen2.5-VL or LLaVA-OneVision checkpoint")


def named_models() -> tuple[ModelCard, ...]:
    """Every model streamvlm knows by name, the bundled one first."""
    return tuple(_CARDS.values())


# What the hub accepts as a repository id (``org/name``): letters, digits, '-', '_', '.',
# not starting with '-' or '.'. Anything else that is no named model and no path fails at once.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")
MODEL_HINT = (
    f"use a model streamvlm names ({TINY_SYNTH}, the default; {TINY_QWEN}, {TINY_LLAVA}, geom-*: "
    "`streamvlm info` lists them), a local checkpoint directory (config.json + *.safetensors) or a "
    "hub id (org/name)"
)


def check_model_name(name: str) -> ModelCard:
    """The card of model ``name`` once ``name`` can name a model: a named model, an existing
    checkpoint directory, or a hub id (which the loader resolves, locally cached or
    downloaded). Imports nothing heavy, so the CLI refuses a typo before loading anything.

    Raises:
        ModelNotFoundError: ``name`` is none of those, or a path with no ``config.json``.
    """
    if name in _CARDS:
        return _CARDS[name]
    if os.path.exists(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelNotFoundError(
                f"{name!r} is not a model directory (no config.json in it); {MODEL_HINT}"
            )
    elif not _HUB_ID.fullmatch(name):
        raise ModelNotFoundError(
            f"unknown model {name!r}: no model of that name and no such directory; {MODEL_HINT}"
        )
    return model_card(name)
