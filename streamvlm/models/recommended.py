"""What a checkpoint recommends for answering: the ``memory_defaults`` of its ``streamvlm_config.json``.

The context that answers best depends on the model. A released 7B model reads a long
context well, so the generic ``MemoryConfig`` defaults (every block while they fit the
device budget, then retrieval) suit it. The bundled ``streamvlm-tiny-synth`` was trained
on 4-16 frame clips with the question read alone: over hundreds of blocks it answers
"nothing", and it answers best over two retrieved blocks and the newest two frames laid
out next to the question (docs/BENCHMARKS.md, "Defaults"). A checkpoint says so in this
file, beside its weights, and sessions of it start from these values; an option a user
gives still wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

FILENAME = "streamvlm_config.json"  # matches the package data pattern of the bundled checkpoints
# MemoryConfig fields a checkpoint may recommend: how chunks are encoded and questions answered,
# never the format blocks are stored in (a resumed session may change these too)
RECOMMENDABLE = ("window", "top_k", "answer_window", "answer_tokens", "query_context", "position_mode")


def memory_defaults_of(name: str) -> dict:
    """The ``MemoryConfig`` values model ``name`` recommends (``StreamVLM.from_pretrained``'s
    name: a bundled or built model's, a directory or a hub id already loaded); ``{}`` when
    its checkpoint has no ``streamvlm_config.json``, and for the models built in code.

    Raises ``ConfigError`` naming the file when it is not valid JSON, recommends a field
    outside ``RECOMMENDABLE`` or a value ``MemoryConfig`` refuses.
    """
    from ..config import MemoryConfig
    from .bundled import bundled_path
    from .catalog import GEOMETRY_MODELS, TINY_MODELS
    from .hf_compat import checkpoint_file

    if name in TINY_MODELS or name in GEOMETRY_MODELS:
        return {}
    path = checkpoint_file(str(bundled_path(name) or name), FILENAME)
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); fix or remove it") from e
    defaults = doc.get("memory_defaults", {}) if isinstance(doc, dict) else None
    if not isinstance(defaults, dict):
        raise ConfigError(
            f"{path}: memory_defaults must be an object of MemoryConfig fields; fix or remove it"
        )
    unknown = sorted(set(defaults) - set(RECOMMENDABLE))
    if unknown:
        raise ConfigError(
            f"{path} recommends {', '.join(unknown)}; a checkpoint may recommend only {', '.join(RECOMMENDABLE)}"
        )
    MemoryConfig(**defaults)  # a bad value fails here, naming the field
    return dict(defaults)
