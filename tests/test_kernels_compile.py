"""The Triton kernels compile to an NVIDIA GPU binary (sm_90, H100), on a machine without a GPU.

The interpreter (test_kernels_triton.py) checks what the kernels compute, but accepts code
that Triton's compiler may reject. Triton compiles to PTX and a cubin without a GPU (its
wheel ships ptxas), so this checks the compiled path too, and reads the PTX for what the
exactness argument relies on: no float division and no FMA contraction.

Compilation needs triton imported in compiled mode, and test_kernels_triton.py may have
imported it in interpreter mode in this process, so it runs in a fresh subprocess: this
file run as a script prints one JSON line of results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCH = 90
SKIP_EXIT = 3  # the script's exit code when this triton has another compile API

_DECODE_VALUES = {
    "sal_ptr": "*u8",
    "tern_ptr": "*u8",
    "tern_scale_ptr": "*u8",
    "tern_max_ptr": "*bf16",
    "sal_codes_ptr": "*u8",
    "sal_scale_ptr": "*u8",
    "sal_zero_ptr": "*i8",
    "sal_max_ptr": "*bf16",
    "table_ptr": "*fp32",
}
_DECODE_KEYS = {
    "tier_ptr": "*i8",
    "rank_ptr": "*i32",
    **{f"k{b}_{p}_ptr": t for b in (4, 2) for p, t in (("codes", "*u8"), ("scale", "*u8"), ("zero", "*i8"))},
    "k4_max_ptr": "*bf16",
    "k2_max_ptr": "*bf16",
    "signs_ptr": "*u8",
    "k1_scale_ptr": "*u8",
    "k1_max_ptr": "*bf16",
    "table_ptr": "*fp32",
    "comps_ptr": "*fp32",
}
_KIVI = {"codes_ptr": "*u8", "scale_ptr": "*fp16", "min_ptr": "*fp16"}
# name -> (module, kernel, pointer types (other arguments are i32), constexprs)
VARIANTS = {
    "pack_bits_2bit_from_int64": ("packing_triton", "_pack_bits_kernel", {"codes_ptr": "*i64", "out_ptr": "*u8"}, {"BITS": 2, "BLOCK": 512}),
    "pack_bits_1bit": ("packing_triton", "_pack_bits_kernel", {"codes_ptr": "*u8", "out_ptr": "*u8"}, {"BITS": 1, "BLOCK": 512}),
    "pack_trits": ("packing_triton", "_pack_trits_kernel", {"codes_ptr": "*u8", "out_ptr": "*u8"}, {"BLOCK": 512}),
    "unpack_bits_4bit": ("packing_triton", "_unpack_kernel", {"packed_ptr": "*u8", "out_ptr": "*u8"}, {"BITS": 4, "BLOCK": 1024}),
    "unpack_trits": ("packing_triton", "_unpack_kernel", {"packed_ptr": "*u8", "out_ptr": "*u8"}, {"BITS": 0, "BLOCK": 1024}),
    "kivi2_keys_fp32": ("kivi_triton", "_kivi_decode_kernel", {**_KIVI, "out_ptr": "*fp32"}, {"KEY": True, "BITS": 2, "BLOCK_T": 32, "BLOCK_D": 128}),
    "kivi8_values_bf16": ("kivi_triton", "_kivi_decode_kernel", {**_KIVI, "out_ptr": "*bf16"}, {"KEY": False, "BITS": 8, "BLOCK_T": 128, "BLOCK_D": 32}),
    "vidkv_values_fp16": ("vidkv_triton", "_vidkv_values_kernel", {**_DECODE_VALUES, "out_ptr": "*fp16"}, {"BLOCK_T": 32, "BLOCK_D": 128}),
    "vidkv_values_one_token_bf16": ("vidkv_triton", "_vidkv_values_kernel", {**_DECODE_VALUES, "out_ptr": "*bf16"}, {"BLOCK_T": 1, "BLOCK_D": 32}),
    "vidkv_keys_fp32": ("vidkv_triton", "_vidkv_keys_kernel", {**_DECODE_KEYS, "out_ptr": "*fp32"}, {"BLOCK_T": 32, "BLOCK_D": 128}),
}  # fmt: skip

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def compile_all() -> dict[str, dict]:
    """Compile every variant for sm_``ARCH``; per variant: ok, error, the float ops in its PTX."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from streamvlm.kernels.triton_common import LAUNCH_OPTIONS

    results = {}
    for name, (module, kernel_name, pointers, constexprs) in VARIANTS.items():
        fn = getattr(importlib.import_module(f"streamvlm.kernels.{module}"), kernel_name)
        signature = {a: "constexpr" if a in constexprs else pointers.get(a, "i32") for a in fn.arg_names}
        consts = {(fn.arg_names.index(a),): v for a, v in constexprs.items()}
        try:
            src = ASTSource(fn=fn, signature=signature, constexprs=consts)
        except TypeError as e:  # another ASTSource signature: not this test's business
            print(f"this triton's ASTSource differs: {e}")
            sys.exit(SKIP_EXIT)
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=dict(LAUNCH_OPTIONS))
        except Exception as e:  # report every variant, not just the first failure
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[-3000:], "float_ops": []}
            continue
        ops = re.findall(r"\b((?:div|fma|mul|add|sub)(?:\.[a-z]+)*\.f32)\b", compiled.asm["ptx"])
        results[name] = {"ok": "cubin" in compiled.asm, "error": "", "float_ops": sorted(set(ops))}
    return results


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    if proc.returncode == SKIP_EXIT:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kernel_compiles_to_a_cubin(compiled: dict[str, dict], name: str) -> None:
    assert compiled[name]["ok"], compiled[name]["error"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ptx_rounds_like_the_reference(compiled: dict[str, dict], name: str) -> None:
    # float "/" would be an approximate division on NVIDIA GPUs, and an FMA rounds once where
    # the reference rounds twice: neither may appear for the decodes to stay bit-exact
    ops = compiled[name]["float_ops"]
    assert not [op for op in ops if op.startswith(("div", "fma"))], ops


if __name__ == "__main__":
    print(json.dumps(compile_all()))
