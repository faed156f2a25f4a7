"""``streamvlm info``: versions, which video decoders and faiss import, the devices torch
sees, and the models streamvlm knows by name.

``collect_info()`` gathers it as a dict; it imports each library inside a ``try``, so a
missing or broken one is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

from .cli_options import DEFAULT_MODEL, add_json_option
from .models.bundled import bundled_files_present
from .models.catalog import BUNDLED, TINY_MODELS, named_models


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``info`` to the CLI's subcommands; returns its parser."""
    i = subparsers.add_parser(
        "info",
        help="versions, video decoders, faiss, devices and the named models",
        description=(
            "Show versions, which video decoders and faiss import, the devices torch sees, and the "
            "models streamvlm knows by name: what each is and whether its weights are here."
        ),
    )
    add_json_option(i)
    i.set_defaults(func=cmd_info)
    return i


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _try_import(module: str) -> tuple[Any, str | None]:
    import importlib

    try:
        return importlib.import_module(module), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


def streamvlm_version() -> str:
    """The installed distribution's version (``streamvlm --version``)."""
    return _version("streamvlm") or "unknown (not installed)"


def model_list() -> list[dict]:
    """Every named model's card (the bundled one first) with ``weights``: where they come
    from, and for the bundled model whether its checkpoint files are here."""
    models = []
    for card in named_models():
        if card.kind == BUNDLED:
            weights = "checkpoint present" if bundled_files_present(card.name) else "checkpoint missing"
        elif card.name in TINY_MODELS:
            weights = "built in memory"
        else:
            weights = "made offline on first use"
        models.append({**card.to_dict(), "weights": weights})
    return models


def collect_info() -> dict:
    """``versions``, ``decoders``, ``faiss``, ``devices`` (plus ``cuda_available`` when
    torch imports) and ``models`` (:func:`model_list`), as ``streamvlm info --json`` prints them."""
    info: dict[str, Any] = {
        "versions": {
            "streamvlm": streamvlm_version(),
            "python": f"{platform.python_version()} ({platform.python_implementation()}, {platform.system()} {platform.machine()})",
        },
        "decoders": {},
        "faiss": {},
        "devices": [],
    }
    versions = info["versions"]
    torch, err = _try_import("torch")
    versions["torch"] = torch.__version__ if torch else f"not importable ({err})"
    for name in ("transformers", "numpy"):
        mod, err = _try_import(name)
        versions[name] = getattr(mod, "__version__", "?") if mod else f"not importable ({err})"

    av, err = _try_import("av")
    versions["av"] = getattr(av, "__version__", "?") if av else _version("av") or "not installed"
    ffmpeg = None
    if av is not None:
        try:
            ffmpeg = ".".join(str(x) for x in av.library_versions["libavcodec"])
        except Exception:
            ffmpeg = None
    info["decoders"]["pyav"] = {"ok": av is not None, "error": err, "libavcodec": ffmpeg}

    decord, err = _try_import("decord")
    versions["decord"] = getattr(decord, "__version__", None) or _version("decord") or "not installed"
    info["decoders"]["decord"] = {"ok": decord is not None, "error": err}

    faiss, err = _try_import("faiss")
    versions["faiss"] = (
        getattr(faiss, "__version__", None)
        or _version("faiss-cpu")
        or _version("faiss-gpu-cu12")
        or "not installed"
    )
    gpus = 0
    if faiss is not None and hasattr(faiss, "get_num_gpus"):
        try:
            gpus = int(faiss.get_num_gpus())
        except Exception:
            gpus = 0
    info["faiss"] = {"ok": faiss is not None, "error": err, "gpus": gpus}

    info["devices"].append(
        {"device": "cpu", "name": platform.processor() or platform.machine(), "threads": os.cpu_count()}
    )
    if torch is not None:
        try:
            if torch.cuda.is_available():
                for d in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(d)
                    info["devices"].append(
                        {
                            "device": f"cuda:{d}",
                            "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 1),
                        }
                    )
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                info["devices"].append({"device": "mps", "name": "Apple Metal"})
        except Exception as e:
            info["devices"].append({"device": "cuda", "error": str(e).splitlines()[0]})
        info["cuda_available"] = bool(torch.cuda.is_available())
    info["models"] = model_list()
    return info


def cmd_info(args: argparse.Namespace) -> int:
    """Run ``streamvlm info``: a table, or ``--json``."""
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0

    def status(d: dict) -> str:
        return "ok" if d["ok"] else f"unavailable ({d['error']})"

    rows: list[tuple[str, str]] = list(info["versions"].items()) + [("", "")]
    for name, d in info["decoders"].items():
        extra = f" (libavcodec {d['libavcodec']})" if d.get("libavcodec") else ""
        rows.append((f"decoder {name}", status(d) + extra))
    f = info["faiss"]
    rows.append(("faiss", status(f) + (f", {f['gpus']} GPU(s) visible to faiss" if f["ok"] else "")))
    rows.append(("", ""))
    for d in info["devices"]:
        if "error" in d:
            rows.append((f"device {d['device']}", f"error: {d['error']}"))
        elif "threads" in d:
            rows.append((f"device {d['device']}", f"{d['name']} ({d['threads']} threads)"))
        elif "memory_gib" in d:
            rows.append((f"device {d['device']}", f"{d['name']} ({d['memory_gib']} GiB)"))
        else:
            rows.append((f"device {d['device']}", d["name"]))
    if not info.get("cuda_available", False):
        rows.append(("device cuda", "not available"))
    rows.append(("", ""))
    for m in info["models"]:
        default = ", the default" if m["name"] == DEFAULT_MODEL else ""
        rows.append((f"model {m['name']}", f"{m['kind']}{default}, {m['weights']}: {m['about']}"))
    width = max(len(k) for k, _ in rows) + 2
    for k, v in rows:
        print(f"{k:<{width}}{v}".rstrip())
    return 0
