"""Model names to backends: the offline tiny models, or real checkpoints via ``from_pretrained``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
)

from ..errors import ConfigError, ModelNotFoundError
from ..output import is_verbose
from ..registry import BACKENDS
from .base import Backend
from .bundled import bundled_path
from .geometry import geometry_path
from .hf_compat import checkpoint_file, progress_bars
from .preprocessing import llava_preprocess_for, qwen_preprocess_for
from .tiny import (
    TINY_MODELS,
    build_tiny_model,
    build_tiny_tokenizer,
    tiny_processor_configs,
)

# The transformers class that loads a checkpoint of each model family (``BACKENDS`` has
# the streamvlm side of each family under the same model_type).
SUPPORTED = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
}
# How each family's frames are preprocessed: (model config, processor config, video
# processor config) -> the preprocessing its backend takes.
_PREPROCESS = {
    "qwen2_5_vl": qwen_preprocess_for,
    "llava_onevision": lambda model_config, processor_config, _video_config: llava_preprocess_for(
        model_config, processor_config
    ),
}

_HINT = f"pass a local checkpoint directory (config.json + *.safetensors), or use {' / '.join(TINY_MODELS)}"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_backend(name: str, device=None, dtype=None, seed: int = 0) -> Backend:
    """Build the backend for ``name`` on ``device`` in ``dtype``."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if name in TINY_MODELS:
        model = build_tiny_model(name, seed=seed).to(device=device, dtype=dtype)
        tokenizer = build_tiny_tokenizer()
        processor_config, video_config = tiny_processor_configs(name)
    else:
        # transformers' bars (weight loading, hub downloads) only for verbose output (configure_output)
        with progress_bars(shown=is_verbose()):
            model, tokenizer, processor_config, video_config = _load_checkpoint(name, device, dtype)
    # the tiny models are built with their family's transformers config, so they have its model_type
    model_type = model.config.model_type
    preprocess = _PREPROCESS[model_type](model.config, processor_config, video_config)
    return BACKENDS.get(model_type)(model, tokenizer, name, preprocess)


def _load_checkpoint(name: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """(model, tokenizer, preprocessor config, video preprocessor config) of a checkpoint."""
    # a bundled or real-geometry (geom-*, made on first use) model's name keeps naming it
    source = str(bundled_path(name) or geometry_path(name) or name)
    model_class = SUPPORTED[_model_type(source)]
    try:
        model = model_class.from_pretrained(source, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load the weights of model {name!r} ({_first_line(e)}); {_HINT}"
        ) from e
    processor_config = _json_file(source, "preprocessor_config.json")
    video_config = _json_file(source, "video_preprocessor_config.json")
    return model, tokenizer, processor_config, video_config


def _model_type(name: str) -> str:
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ModelNotFoundError(f"{name!r} is not a model directory (no config.json in it); {_HINT}")
    try:
        config = _load_config(name)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"unknown model {name!r}: no local directory of that name and it could not be fetched from the "
            f"Hugging Face hub (offline?); {_HINT}"
        ) from e
    if config.model_type not in BACKENDS:
        raise ModelNotFoundError(
            f"model {name!r} is a {config.model_type!r} model; streamvlm supports {', '.join(BACKENDS.names())}"
        )
    return config.model_type


def _load_config(name: str):
    """The model config from a local directory, the local hub cache, or the hub.

    Without network huggingface_hub retries for ~25 s before it gives up; a name that is
    neither local nor cached fails at once when the hub's host does not even resolve.
    """
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        if Path(name).exists() or not _hub_resolves():
            raise
    return AutoConfig.from_pretrained(name)


def _hub_resolves(timeout_s: float = 2.0) -> bool:
    """Whether the hub endpoint's host name resolves (offline mode counts as no)."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout_s)
        return True
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)


def _json_file(name: str, filename: str) -> dict:
    """A JSON file of the checkpoint as a dict ({} when it has none).

    Processor configs are read as JSON rather than through AutoImageProcessor, which may
    pick a torchvision ("fast") processor that does not import everywhere.
    """
    path = checkpoint_file(name, filename)
    return json.loads(Path(path).read_text()) if path else {}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
