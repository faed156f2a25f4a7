"""Models that ship with the project, as package data (no torch import: the CLI reads the default name at start-up)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError

# The checkpoint `streamvlm train-tiny` trains on the synthetic world (docs/training.md):
# the default model of `streamvlm watch` and `eval needle`.
from .catalog import TINY_SYNTH

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Inside the package, so that a wheel carries them (pyproject.toml's package-data lists the
# files loading reads); found through importlib.resources, so an installed wheel, an editable
# install and a zipped package all find them.
CHECKPOINTS = files(__package__) / "checkpoints"
BUNDLED: dict[str, Traversable] = {TINY_SYNTH: CHECKPOINTS / TINY_SYNTH}


def bundled_files_present(name: str) -> bool:
    """Whether the files of bundled model ``name`` are in the package (a checkout or build
    may have lost ``streamvlm/models/checkpoints/``)."""
    return (BUNDLED[name] / "config.json").is_file()


def bundled_path(name: str) -> Path | None:
    """The directory of a bundled model ``name``, or ``None`` if ``name`` is not one.

    The directory is on disk, as ``from_pretrained`` needs: the package's own directory, or,
    when the package is imported from a zip archive, a copy extracted once per process.

    Raises:
        ModelNotFoundError: ``name`` is bundled but its files are not here (a checkout or
            a build that lost ``streamvlm/models/checkpoints/``).
    """
    resource = BUNDLED.get(name)
    if resource is None:
        return None
    if not bundled_files_present(name):
        raise ModelNotFoundError(
            f"no checkpoint of {name!r} at {resource}: train one with `streamvlm train-tiny --out {resource}` "
            "(docs/training.md) or pass a checkpoint directory with --model"
        )
    if isinstance(resource, Path):
        return resource
    return _extracted(name)


@cache
def _extracted(name: str) -> Path:
    """A temporary on-disk copy of the bundled checkpoint ``name``, removed when the process exits."""
    out = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for item in BUNDLED[name].iterdir():
        if item.is_file():  # a checkpoint directory is flat
            (out / item.name).write_bytes(item.read_bytes())
    return out
