"""Models that ship with the project (no torch import: the CLI reads the default name at start-up)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

# The checkpoint `streamvlm train-tiny` trains on the synthetic world (docs/training.md),
# committed in assets/models/: the default model of `streamvlm watch` and `eval needle`.
TINY_SYNTH = "streamvlm-tiny-synth"

_ASSETS = Path(__file__).resolve().parents[2] / "assets" / "models"
BUNDLED: dict[str, Path] = {TINY_SYNTH: _ASSETS / TINY_SYNTH}


def bundled_path(name: str) -> Path | None:
    """The directory of a bundled model ``name``, or ``None`` if ``name`` is not one.

    Raises:
        ModelNotFoundError: ``name`` is bundled but its files are not here (it lives
            in a source checkout's ``assets/models/``, which a wheel does not carry).
    """
    path = BUNDLED.get(name)
    if path is None:
        return None
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"no checkpoint of {name!r} at {path}: train one with `streamvlm train-tiny --out {path}` "
            "(docs/training.md) or pass a checkpoint directory with --model"
        )
    return path
