"""VidKV tuned to store <= 2.0 bits per element, metadata included (streamvlm's default).

Same ideas as ``vidkv-paper`` (``vidkv_paper.py``, VidKV as published), with the storage made honest and small:

Groups hold at least ``group_size`` elements (``groups.balanced_group``: a 65-token block
has groups of 33 and 32, not 32, 32 and 1), so metadata per element never exceeds its
full-group value.

Keys (channels ranked per head by range, max - min over the tokens)
  * the widest ``key_4bit_fraction`` of channels (default 1/32: 4 of 128, 1 of 32) at 4
    bits, the next ones up to ``key_2bit_fraction`` (default half) at 2 bits, per channel
    in groups of tokens; scale as a log8 byte, minimum as an int8 zero point (16 bits per
    group, ``uniform.py``). The 4-bit tier is streamvlm's addition to VidKV's 2-bit/1-bit
    split: a handful of outlier channels carry most of ``q.k``, so their 2-bit error is
    most of the attention error, and 2 more bits on 1/32 of the channels cost 0.0625 bit
    per element (``key_4bit_fraction=0`` gives the published two-tier split).
  * the other ``m`` channels go through ``rfft`` (``m`` real degrees of freedom instead of the
    full FFT's ``2m`` components: same reconstruction, ``spectral.py``), one sign bit each,
    with a log8 mean-magnitude scale per component per group of tokens.
  * the tiers are chosen on the first key block encoded for a layer and then frozen: they
    are stored once per layer (2 bits per channel per head, ``shared_state`` /
    ``shared_bits``), not in every block, and keep a channel's treatment stable along the
    stream.

Values
  * a ``salient_fraction`` of tokens per head (largest value L2 norm: question independent,
    known at write time) is kept at 2 bits per token (groups of channels, log8 scale +
    int8 zero point).
  * the rest is ternary per channel in groups of tokens, packed 5 trits per byte (1.6
    bits). The threshold is ``ternary_threshold * mean|v|`` and the decoded level
    is the least-squares one (mean ``|v|`` over non-zero codes), stored as a log8 byte.

Blocks of fewer than ``group_size`` tokens (pruned blocks, short chunks) use the compact
layout of ``vidkv_compact.py`` instead (tensor names ``c.*``): metadata per head and per run
of tokens against a per-layer channel profile, <= 2.06 bits per element (K and V together)
at head_dim 32 and 128 whatever the token count, 1 token included. Which layout a block is
in is read from its tensor names, so blocks written before the compact layout existed
(standard layout at any token count) still decode.

Bits per element at group 32 (see docs/quantization.md for the exact tables): keys
<= 1.5625 + 0.375 (+ three bf16 per head), values ~1.5 + <= 0.23 + salient ~0.16 + mask
``1/head_dim``; both <= 2.0 for every block of >= 32 tokens at head_dim 32, 64 or 128
(smaller blocks: the compact layout; see docs/quantization.md for both tables).

Per-layer state, frozen when the layer's first key (value) block is encoded, or set by
``calibrate``: the key channel tiers and the key and value channel profiles. It never
changes afterwards, whatever the later blocks' sizes: every block already encoded was
quantized against it (re-freezing on a later, larger block would silently corrupt them).
A layer whose first block is short still calibrates sensibly: tiers are then ranked by peak
magnitude (a range over a few adjacent tokens says little, ``selection.channel_tiers``) and
the profile is shrunk towards each tier's mean (``vidkv_compact.profile_rms``).
"""

from __future__ import annotations

import torch

from . import vidkv_compact as compact
from .base import EncodedTensor, KVCodec, QuantError, check_fraction, check_group_size
from .groups import balanced_group
from .lowbit import sign_decode, sign_encode, ternary_decode, ternary_encode, ternary_ls_level
from .packing import pack_per_head, unpack_per_head
from .scales import decode_log8, encode_log8
from .selection import (
    channel_rows,
    channel_tiers,
    key_2bit_count,
    salient_count,
    salient_tokens,
)
from .spectral import from_rfft_components, rfft_components
from .uniform import decode_log8_minmax, encode_log8_minmax


class VidKVCodec(KVCodec, name="vidkv"):
    """VidKV with rfft signs, base-3 trits, log8 metadata and a per-layer frozen channel split."""

    # key channel tiers: (tier id, bits) of the uniform tiers; tier 0 is the rfft sign tier
    _UNIFORM_TIERS = ((2, 4), (1, 2))

    def __init__(
        self,
        group_size: int = 32,
        key_2bit_fraction: float = 0.5,
        key_4bit_fraction: float = 1 / 32,
        salient_fraction: float = 0.0625,
        ternary_threshold: float = 0.75,
    ) -> None:
        self.group_size = check_group_size(self.name, group_size)
        self.key_2bit_fraction = check_fraction(self.name, "key_2bit_fraction", key_2bit_fraction, 0.0, 1.0)
        self.key_4bit_fraction = check_fraction(self.name, "key_4bit_fraction", key_4bit_fraction, 0.0, 0.25)
        self.salient_fraction = check_fraction(self.name, "salient_fraction", salient_fraction, 0.0, 0.5)
        self.ternary_threshold = check_fraction(self.name, "ternary_threshold", ternary_threshold, 0.0, 2.0)
        self._tiers: dict[int, torch.Tensor] = {}  # layer -> int8 [heads, head_dim] (0, 1, 2), CPU
        # (layer, device) -> (the CPU tiers it was made from, tiers on the device, channel indices
        # [heads, count] of each tier on the device): made once per layer and device, so coding a
        # block neither copies the tiers over nor reads counts back from the device
        self._on_device: dict[
            tuple[int, str], tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]
        ] = {}
        # loaded but not yet unpacked (the packed form does not say head_dim): layer -> uint8
        self._pending: dict[int, torch.Tensor] = {}
        # channel profiles of the compact layout, as stored: kind -> layer -> (uint8 log8 codes
        # [heads, head_dim], bf16 anchor [heads]), CPU
        self._profiles: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {"key": {}, "value": {}}
        # (kind, layer, device) -> (the stored profile it was decoded from, (heads, head_dim) it
        # was checked against, decoded profile)
        self._decoded_profiles: dict[tuple[str, int, str], tuple[tuple, tuple[int, int], torch.Tensor]] = {}

    # per-layer state ------------------------------------------------------------------
    def tier_counts(self, head_dim: int) -> list[int]:
        """Channels per head at 4 bits and at 2 bits; the rest get rfft sign bits."""
        wide = key_2bit_count(head_dim, self.key_2bit_fraction)
        n4 = min(wide, round(head_dim * self.key_4bit_fraction))
        return [n4, wide - n4]

    def calibrate(self, layer: int, keys: torch.Tensor, values: torch.Tensor | None = None) -> None:
        """Choose (and freeze) ``layer``'s key channel tiers and key profile from ``keys``
        ``[heads, tokens, head_dim]``, and its value profile from ``values`` if given.

        Encoding the first key (value) block of a layer does this implicitly; call it first to
        choose from a larger or more typical sample instead (e.g. when the first block is one
        token). Calling it after blocks were encoded with the old state makes them undecodable.
        """
        self._validate(keys, "key", layer)
        keys = keys.detach().float()
        score = "range" if keys.shape[1] >= self.group_size else "peak"
        tiers = channel_tiers(keys, self.tier_counts(keys.shape[-1]), score).cpu()
        self._tiers[layer] = tiers
        self._pending.pop(layer, None)
        self._profiles["key"][layer] = compact.encode_profile(
            compact.key_profile(keys, tiers.to(keys.device))
        )
        if values is not None:
            self._validate(values, "value", layer)
            self._calibrate_values(layer, values.detach().float())

    def _calibrate_values(self, layer: int, values: torch.Tensor) -> None:
        self._profiles["value"][layer] = compact.encode_profile(compact.profile_rms(values))

    # shared-state field names of each kind's profile: (codes, anchor)
    _PROFILE_FIELDS = {"key": ("kprof", "kprof_max"), "value": ("vprof", "vprof_max")}

    def shared_state(self, layer: int) -> dict[str, torch.Tensor]:
        state = {}
        if layer in self._pending:
            state["tiers"] = self._pending[layer]
        elif layer in self._tiers:
            state["tiers"] = pack_per_head(self._tiers[layer], 2)
        for kind, names in self._PROFILE_FIELDS.items():
            if layer in self._profiles[kind]:
                state.update(zip(names, (t.cpu() for t in self._profiles[kind][layer]), strict=True))
        return state

    def load_shared_state(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ``shared_state(layer)``; the head_dim is taken from the first block coded.

        State saved before the compact layout existed (``tiers`` alone) loads too: the
        profiles are then calibrated on the layer's next block, as for a new layer.
        """
        groups = [("tiers",), *self._PROFILE_FIELDS.values()]
        allowed = {name for group in groups for name in group}
        present = [group for group in groups if any(name in tensors for name in group)]
        if set(tensors) - allowed or any(not all(name in tensors for name in g) for g in present):
            raise QuantError(
                f"{self.name}: shared state holds 'tiers' and the pairs kprof/kprof_max, vprof/vprof_max; "
                f"got {sorted(tensors)}"
            )
        if "tiers" in tensors:
            self._pending[layer] = tensors["tiers"].cpu()
            self._tiers.pop(layer, None)
        for kind, (codes, anchor) in self._PROFILE_FIELDS.items():
            if codes in tensors:
                self._profiles[kind][layer] = (tensors[codes].cpu(), tensors[anchor].cpu())

    def reset(self) -> None:
        """Forget every layer's channel tiers and profiles (a new stream, another model)."""
        self._tiers.clear()
        self._on_device.clear()
        self._pending.clear()
        self._decoded_profiles.clear()
        for profiles in self._profiles.values():
            profiles.clear()

    def profile(self, kind: str, layer: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``layer``'s decoded ``kind`` profile ``[heads, width]`` on ``device`` (``compact.profile_width``),
        for blocks of ``shape`` ``[heads, tokens, head_dim]``; decoded (and checked against the
        shape) once per stored profile, device and shape: blocks of a few tokens pay for no more."""
        stored = self._profiles[kind].get(layer)
        key = (kind, layer, str(device))
        cached = self._decoded_profiles.get(key)
        # a new calibration or load replaces the stored tuple, which invalidates the entry
        if cached is not None and cached[0] is stored and cached[1] == (shape[0], shape[2]):
            return cached[2]
        if stored is None:
            raise QuantError(
                f"{self.name}: no {kind} channel profile for layer {layer}; "
                "load it with load_shared_state(layer, ...) before decoding"
            )
        tiers = self._layer_tiers(layer, shape[0], shape[2]) if kind == "key" else None
        if tuple(stored[0].shape) != (shape[0], compact.profile_width(kind, shape[2], tiers)):
            raise QuantError(
                f"{self.name}: layer {layer}'s {kind} profile is for {tuple(stored[0].shape)} heads x head_dim, "
                f"got {(shape[0], shape[2])}; use one codec per model (or call reset())"
            )
        decoded = compact.decode_profile(stored[0].to(device), stored[1].to(device))
        self._decoded_profiles[key] = (stored, (shape[0], shape[2]), decoded)
        return decoded

    def _layer_tiers(self, layer: int, heads: int, head_dim: int) -> torch.Tensor | None:
        if layer in self._pending:
            self._tiers[layer] = unpack_per_head(self._pending.pop(layer), 2, (heads, head_dim)).to(
                torch.int8
            )
        tiers = self._tiers.get(layer)
        if tiers is not None and tuple(tiers.shape) != (heads, head_dim):
            raise QuantError(
                f"{self.name}: layer {layer} was calibrated for {tuple(tiers.shape)} heads x head_dim, "
                f"got {(heads, head_dim)}; use one codec per model (or call reset())"
            )
        return tiers

    # encode / decode --------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        x = x.float()
        tokens = x.shape[1]
        self.ensure_layer_state(x, kind, layer)
        channels = self._tier_channels(layer, x.device) if kind == "key" else None
        if tokens < self.group_size:
            prof = self.profile(kind, layer, x.shape, x.device)
            if kind == "key":
                return compact.encode_keys(x, channels, prof, self.group_size)
            return compact.encode_values(x, prof, self.ternary_threshold)
        return self._encode_keys(x, channels) if kind == "key" else self._encode_values(x)

    def ensure_layer_state(self, x: torch.Tensor, kind: str, layer: int, *, check: bool = False) -> None:
        """Freeze ``layer``'s ``kind`` state on ``x`` unless it is frozen already: what encoding
        the layer's first block of that kind does (keys: the channel tiers and key profile;
        values: the value profile). ``check``: run ``check_values`` on ``x`` before freezing
        (for callers that check values later, from passes of their own)."""
        heads, _, head_dim = x.shape
        if kind == "key":
            tiers = self._layer_tiers(layer, heads, head_dim)
            frozen = tiers is not None and layer in self._profiles["key"]
        else:
            frozen = layer in self._profiles["value"]
        if frozen:
            return
        if kind == "key" and tiers is None:
            self.calibrate(layer, x)  # which checks x itself
            return
        if check:
            self.check_values([x])
        x = x.detach().float()
        if kind == "value":
            self._calibrate_values(layer, x)
        else:  # a layer restored from state saved before profiles existed keeps its tiers
            self._profiles["key"][layer] = compact.encode_profile(compact.key_profile(x, tiers.to(x.device)))

    def _decode(self, enc: EncodedTensor, device: torch.device) -> torch.Tensor:
        t = {k: v.to(device) for k, v in enc.tensors.items()}
        if compact.is_compact(t):
            prof = self.profile(enc.kind, enc.layer, enc.shape, device)
            if enc.kind == "key":
                self._required_tiers(enc.layer, enc.shape)
                channels = self._tier_channels(enc.layer, device)
                return compact.decode_keys(t, enc.shape, channels, prof, self.group_size)
            return compact.decode_values(t, enc.shape, prof)
        if enc.kind == "key":
            return self._decode_keys(t, enc.shape, enc.layer, device)
        return self._decode_values(t, enc.shape, device)

    def _tier_channels(self, layer: int, device: torch.device) -> dict[int, torch.Tensor]:
        """Each of ``layer``'s tiers' channel indices on ``device`` (``compact.tier_channels``),
        made from the CPU tiers once per device: coding a block neither copies the tiers over
        nor reads counts back. A new calibration replaces the CPU tiers object, which
        invalidates the entry."""
        cpu = self._tiers[layer]
        key = (layer, str(device))
        cached = self._on_device.get(key)
        if cached is None or cached[0] is not cpu:
            channels = {tier: idx.to(device) for tier, idx in compact.tier_channels(cpu).items()}
            cached = self._on_device[key] = (cpu, channels)
        return cached[1]

    def _required_tiers(self, layer: int, shape: tuple[int, ...]) -> torch.Tensor:
        tiers = self._layer_tiers(layer, shape[0], shape[2])
        if tiers is None:
            raise QuantError(
                f"{self.name}: no key channel tiers for layer {layer}; "
                "load them with load_shared_state(layer, ...) before decoding"
            )
        return tiers

    def _encode_keys(self, x: torch.Tensor, channels: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        heads, tokens, head_dim = x.shape
        group = balanced_group(tokens, self.group_size)
        out: dict[str, torch.Tensor] = {}
        for tier, bits in self._UNIFORM_TIERS:
            idx = channels[tier]
            if idx.shape[1] == 0:
                continue
            # tokens on the last axis: a group is one channel over `group` tokens
            q = encode_log8_minmax(x.gather(2, channel_rows(idx, tokens)).transpose(1, 2), bits, group)
            out[f"k{bits}.codes"] = pack_per_head(q["codes"].transpose(1, 2), bits)
            out.update({f"k{bits}.{name}": q[name] for name in ("scale", "zero", "scale_max")})
        comps = rfft_components(x.gather(2, channel_rows(channels[0], tokens)))  # [heads, tokens, m]
        signs, level = sign_encode(comps.transpose(1, 2), group)
        out["k1.signs"] = pack_per_head(signs.transpose(1, 2), 1)
        out["k1.scale"], out["k1.scale_max"] = encode_log8(level, round_up=False)
        return out

    def _decode_keys(
        self, t: dict[str, torch.Tensor], shape: tuple[int, ...], layer: int, device: torch.device
    ) -> torch.Tensor:
        heads, tokens, head_dim = shape
        self._required_tiers(layer, shape)
        channels = self._tier_channels(layer, device)
        group = balanced_group(tokens, self.group_size)
        out = torch.empty(shape, device=device)
        for tier, bits in self._UNIFORM_TIERS:
            idx = channels[tier]
            if idx.shape[1] == 0:
                continue
            codes = unpack_per_head(t[f"k{bits}.codes"], bits, (heads, tokens, idx.shape[1])).transpose(1, 2)
            part = decode_log8_minmax(
                codes, t[f"k{bits}.scale"], t[f"k{bits}.zero"], t[f"k{bits}.scale_max"], group, bits
            )
            out.scatter_(2, channel_rows(idx, tokens), part.transpose(1, 2))
        idx = channels[0]
        m = idx.shape[1]
        signs = unpack_per_head(t["k1.signs"], 1, (heads, tokens, m)).transpose(1, 2)
        comps = sign_decode(signs, decode_log8(t["k1.scale"], t["k1.scale_max"]), group).transpose(1, 2)
        out.scatter_(2, channel_rows(idx, tokens), from_rfft_components(comps, m))
        return out

    def _encode_values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        heads, tokens, head_dim = x.shape
        sal = salient_tokens(x, salient_count(tokens, self.salient_fraction))
        rest = x[~sal].view(heads, -1, head_dim).transpose(1, 2)  # [heads, head_dim, tokens - n_sal]
        group = balanced_group(rest.shape[-1], self.group_size)
        tern, _ = ternary_encode(rest, group, self.ternary_threshold)
        level_code, level_max = encode_log8(ternary_ls_level(rest, tern, group), round_up=False)
        q = encode_log8_minmax(x[sal].view(heads, -1, head_dim), 2, balanced_group(head_dim, self.group_size))
        return {
            "salient": pack_per_head(sal, 1),
            "tern.codes": pack_per_head((tern + 1).transpose(1, 2), None),
            "tern.scale": level_code,
            "tern.scale_max": level_max,
            "sal.codes": pack_per_head(q["codes"], 2),
            "sal.scale": q["scale"],
            "sal.zero": q["zero"],
            "sal.scale_max": q["scale_max"],
        }

    def _decode_values(
        self, t: dict[str, torch.Tensor], shape: tuple[int, ...], device: torch.device
    ) -> torch.Tensor:
        heads, tokens, head_dim = shape
        sal = unpack_per_head(t["salient"], 1, (heads, tokens)).bool()
        n_sal = int(sal[0].sum())
        codes = unpack_per_head(t["tern.codes"], None, (heads, tokens - n_sal, head_dim)).transpose(1, 2)
        level = decode_log8(t["tern.scale"], t["tern.scale_max"])
        group = balanced_group(tokens - n_sal, self.group_size)
        rest = ternary_decode(codes.to(torch.int8) - 1, level, group).transpose(1, 2)
        q = unpack_per_head(t["sal.codes"], 2, (heads, n_sal, head_dim))
        group = balanced_group(head_dim, self.group_size)
        salient = decode_log8_minmax(q, t["sal.scale"], t["sal.zero"], t["sal.scale_max"], group, 2)
        out = torch.empty(shape, device=device)
        out[~sal] = rest.reshape(-1, head_dim)
        out[sal] = salient.reshape(-1, head_dim)
        return out
