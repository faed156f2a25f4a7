"""Model names to backends: the offline tiny models, or real checkpoints via ``from_pretrained``."""

from __future__ import annotations

import importlib.util
import json
import socket
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
)

from ..config import ATTENTION_IMPLEMENTATIONS, DTYPE_NAMES
from ..errors import ConfigError, ModelNotFoundError
from ..output import is_verbose
from ..registry import BACKENDS
from .base import Backend
from .bundled import bundled_path
from .catalog import MODEL_HINT, check_model_name
from .geometry import geometry_path
from .hf_compat import checkpoint_file, flash_causal_is_bottom_right, progress_bars
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
# processor config, max_pixels) -> the preprocessing its backend takes.
_PREPROCESS = {"qwen2_5_vl": qwen_preprocess_for, "llava_onevision": llava_preprocess_for}

# The attention implementations a model can be loaded with (transformers' names, listed in
# config.ATTENTION_IMPLEMENTATIONS) decide the vision tower's attention, that of plain
# ``model(...)`` calls, and which streaming form the language model's prefills run
# (hf_compat.streaming_attention): ``streamvlm_sdpa`` for sdpa and eager,
# ``streamvlm_flash_attention_2`` for flash_attention_2. Both take each layer's causal
# pattern from that layer's own cache length (per-layer retrieval leaves layers with
# different lengths). flash_attention_2 is exact where it runs (the Qwen2.5-VL tower's
# windows are its variable-length batches, one launch instead of a Python loop over
# windows; SigLIP's full attention needs no mask) and only faster.
DEFAULT_ATTENTION = "sdpa"  # one of ATTENTION_IMPLEMENTATIONS (config.py)


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
    """The torch dtype ``dtype`` names (``DTYPE_NAMES``), or the device's default: bfloat16
    on CUDA, float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[dtype])


def resolve_attention(name: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """The attention implementation to load with: ``name``, checked, or ``DEFAULT_ATTENTION``.

    Raises:
        ConfigError: an unknown name, or flash_attention_2 where it cannot run (not on
            CUDA, not in float16/bfloat16, or the ``flash_attn`` package not importable).
    """
    if name is None:
        return DEFAULT_ATTENTION
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(
            f"unknown attention implementation {name!r}; use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    if name == "flash_attention_2":
        if device.type != "cuda":
            raise ConfigError(f"flash_attention_2 runs on CUDA only, not on {device}; use --attn sdpa there")
        if dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(
                f"flash_attention_2 needs float16 or bfloat16 weights, not {dtype}; use --dtype bfloat16"
            )
        if not _installed("flash_attn"):
            raise ConfigError(
                "flash_attention_2 needs the flash-attn package, which is not installed; "
                "pip install flash-attn --no-build-isolation, or use --attn sdpa"
            )
        if not flash_causal_is_bottom_right():
            raise ConfigError(
                "the installed flash-attn is older than 2.1 (its causal mask is top-left aligned, which "
                "streaming over a cache needs bottom-right); pip install -U flash-attn, or use --attn sdpa"
            )
    return name


def load_backend(
    name: str,
    device=None,
    dtype=None,
    seed: int = 0,
    *,
    max_pixels: int | None = None,
    attn_implementation: str | None = None,
) -> Backend:
    """Build the backend for ``name`` on ``device`` in ``dtype``.

    ``max_pixels`` is the per-frame pixel budget (Qwen2.5-VL only; default: the
    checkpoint's video processor config, else a streaming default, models/preprocessing.py);
    ``attn_implementation`` one of ``ATTENTION_IMPLEMENTATIONS`` (default ``sdpa``).
    """
    check_model_name(name)  # a name that can name no model fails here, before anything loads
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    attention = resolve_attention(attn_implementation, device, dtype)
    if name in TINY_MODELS:
        model = build_tiny_model(name, seed=seed).to(device=device, dtype=dtype)
        if attention != model.config._attn_implementation:
            model.set_attn_implementation(attention)
        preprocess = preprocess_for(model.config, *tiny_processor_configs(name), max_pixels)
        tokenizer = build_tiny_tokenizer()
    else:
        # a bundled or real-geometry (geom-*, made on first use) model's name keeps naming it
        source = str(bundled_path(name) or geometry_path(name) or name)
        config = _supported_config(source)
        # processor configs and options are checked before the weights load, which takes minutes at 7B
        processor_configs = (
            _json_file(source, f) for f in ("preprocessor_config.json", "video_preprocessor_config.json")
        )
        preprocess = preprocess_for(config, *processor_configs, max_pixels)
        # transformers' bars (weight loading, hub downloads) only for verbose output (configure_output)
        with progress_bars(shown=is_verbose()):
            model, tokenizer = _load_weights(
                name, source, SUPPORTED[config.model_type], device, dtype, attention
            )
    # the tiny models are built with their family's transformers config, so they have its model_type
    return BACKENDS.get(model.config.model_type)(model, tokenizer, name, preprocess)


def preprocess_for(model_config, processor_config: dict, video_config: dict, max_pixels: int | None):
    """The frame preprocessing of a model of ``model_config``'s family (models/preprocessing.py)."""
    return _PREPROCESS[model_config.model_type](model_config, processor_config, video_config, max_pixels)


def weight_loading_options(device: torch.device, dtype: torch.dtype, attention: str) -> dict:
    """The keyword arguments ``from_pretrained`` loads a checkpoint's weights with.

    With ``device_map`` transformers builds the model without memory and puts each tensor
    on ``device`` as it is read from the (memory-mapped) safetensors, so a GPU model never
    has a whole copy in host RAM. ``device_map`` needs the accelerate package; without it
    the weights load into host RAM and the caller moves them.
    """
    options = {"dtype": dtype, "attn_implementation": attention}
    if _installed("accelerate"):
        options["device_map"] = device
    return options


def _load_weights(name: str, source: str, model_class, device, dtype, attention: str) -> tuple:
    """(model, tokenizer) of checkpoint ``source`` (``name`` as the user gave it), on ``device``."""
    options = weight_loading_options(device, dtype, attention)
    if "device_map" not in options and device.type != "cpu":
        warnings.warn(
            f"loading {name} onto {device} through host RAM (the whole model, then a copy): the accelerate "
            "package, which loads weights straight onto the device, is not installed; pip install accelerate",
            stacklevel=3,
        )
    try:
        model = model_class.from_pretrained(source, **options)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise ModelNotFoundError(
            f"cannot load the weights of model {name!r} ({_first_line(e)}); {MODEL_HINT}"
        ) from e
    if "device_map" not in options:
        model = model.to(device)
    return model.eval(), tokenizer


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported here (without importing it)."""
    return importlib.util.find_spec(package) is not None


def _supported_config(name: str):
    """The model config of checkpoint ``name`` (a directory with a config.json, or a hub
    id: ``check_model_name`` has passed it), of a family streamvlm supports."""
    try:
        config = _load_config(name)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"unknown model {name!r}: no local directory of that name and it could not be fetched from the "
            f"Hugging Face hub (offline?); {MODEL_HINT}"
        ) from e
    if config.model_type not in SUPPORTED:
        raise ModelNotFoundError(
            f"model {name!r} is a {config.model_type!r} model; streamvlm supports {', '.join(SUPPORTED)} "
            "checkpoints (Qwen2.5-VL, LLaVA-OneVision): pass one of those"
        )
    return config


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
    if not path:
        return {}
    try:
        config = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ConfigError(f"the checkpoint's {filename} is not valid JSON ({e}); fix or remove {path}") from e
    if not isinstance(config, dict):
        raise ConfigError(
            f"the checkpoint's {filename} holds a {type(config).__name__}, not an object; fix {path}"
        )
    return config


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
