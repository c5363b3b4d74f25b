"""The quantized model as one safetensors file: packed integer codes, scales, zero-points, floats.

Layout (few tensors, so the container costs a few kB and the file size stays within 1 % of the
size accounting in size.py even for 2-bit plans):

* ``codes``        uint8: every quantized layer's codes, packed at its bit-width (little-endian
                   bit order, ceil(n*b/8) bytes per layer), layers concatenated in plan order;
* ``scales``       float32: one per group (output channel for ``per-channel[-mse]``, else one per
                   layer);
* ``zero_points``  uint8: one per group (absent for ``symmetric[-mse]``: its codes are stored
                   offset by 2^(b-1), zero-point implicit);
* ``floats``       float32: every other floating state-dict entry, flattened, in state-dict order;
* ``ints``         int32: integer state entries (BatchNorm's num_batches_tracked), if any.

Metadata (strings): ``format``/``version``; ``plan`` (the plan JSON, compact); ``scheme`` (how
the codes were made: the plan's quantizer for round-to-nearest, the reconstruction's base quantizer,
``per-channel-mse`` by default, for learned codes; files from before the MSE quantizers say
``per-channel`` there, same layout); ``index`` (zlib+base64 JSON of every state entry: name, shape, where it lives) so
the file describes itself and a mismatched model is named; ``sha256`` over every other
metadata entry and every tensor's bytes, so a corrupt or edited file (an edited scheme or plan) is
refused; ``reconstruction`` (JSON, when the codes were learned).

Export files are untrusted input: the checksum is checked before anything else is parsed, the
index is inflated with a bound (a description of the model's own state entries, never more), and
every field (scheme, bits, shapes, sizes) is checked against the plan and the model before
loading. Version 1 files (checksum over tensors only) are refused: export them again.

Loading dequantizes with ``quantizers.dequantize`` - the same arithmetic as fake quantization -
so the weights are bit-exact to the fake-quantized (or reconstructed) ones.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import MixQuantError, first_line
from ..files import atomic_save
from ..models.layers import state_key
from ..plans.plan import Plan
from ..quant.codes import QuantizedLayer, recipe_layers
from ..quant.quantizers import QUANTIZERS, is_per_channel, is_symmetric
from ..recon.reconstruct import apply_quantized_

EXPORT_FORMAT = "mixquant-quantized"
EXPORT_VERSION = 2  # 2: the checksum covers the metadata too
METADATA_LIMIT = 100_000_000  # safetensors refuses to read a header past 100 MB


class ExportError(MixQuantError):
    """An export file is corrupt, of another format, or for another model."""


# --- bit packing ------------------------------------------------------------------------------
def pack_codes(codes: torch.Tensor, nbits: int) -> np.ndarray:
    """uint8 codes (each < 2^nbits) -> ceil(n * nbits / 8) bytes, little-endian bit order."""
    flat = codes.reshape(-1).to(torch.uint8).numpy()
    if flat.size and int(flat.max()) >= 2**nbits:
        raise ExportError(f"a code does not fit in {nbits} bits")
    bits = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :nbits]
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, n: int, nbits: int) -> np.ndarray:
    bits = np.unpackbits(packed, bitorder="little", count=n * nbits).reshape(n, nbits)
    return (bits.astype(np.uint8) << np.arange(nbits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def packed_bytes(n: int, nbits: int) -> int:
    return math.ceil(n * nbits / 8)


# --- writing ----------------------------------------------------------------------------------
def _digest(tensors: Dict[str, torch.Tensor], meta: Dict[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "sha256"):
        h.update(f"{len(key)}:{key}{len(meta[key])}:".encode())
        h.update(meta[key].encode("utf-8", "surrogateescape"))
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().view(torch.uint8).numpy().tobytes() if tensors[key].numel() else b"")
    return h.hexdigest()[:32]


def _encode_index(index: list) -> str:
    return base64.b64encode(zlib.compress(json.dumps(index, separators=(",", ":")).encode(), 9)).decode()


def _decode_index(text: str, limit: int) -> list:
    """The index, inflated to at most ``limit`` bytes (a zlib bomb is refused, not inflated)."""
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(text, validate=True), limit)
        too_big = bool(inflater.unconsumed_tail) or len(raw) >= limit
    except (ValueError, zlib.error):
        raise ExportError("export file has an unreadable layer index (corrupt)") from None
    if too_big:
        raise ExportError(f"export file's layer index inflates past {limit} bytes, more than this model's "
                          "state entries can need (corrupt or hostile)")
    try:
        index = json.loads(raw)
    except (ValueError, RecursionError):
        raise ExportError("export file has an unreadable layer index (corrupt)") from None
    ok = isinstance(index, list) and all(
        isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], list)
        and all(isinstance(d, int) and d >= 0 for d in e[1]) and e[2] in ("q", "f", "i") for e in index)
    if not ok:
        raise ExportError("export file has a malformed layer index (corrupt)")
    return index


def _index_limit(state: Dict[str, torch.Tensor]) -> int:
    """Bytes the index of ``state`` can take as JSON, with room to spare."""
    return 4096 + 2 * sum(len(k) + 16 + 12 * len(v.shape) for k, v in state.items())


def check_metadata_fits(plan: Plan) -> None:
    """Refuse a plan whose JSON cannot fit in an export file's metadata (before any work)."""
    n = len(plan.to_json(indent=None).encode())
    if n > METADATA_LIMIT // 2:
        raise ExportError(f"the plan is {n / 1e6:.0f} MB as JSON (very long layer names?); an export file's "
                          f"metadata holds at most {METADATA_LIMIT // 1_000_000} MB")


def build_tensors(model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer],
                  extra_meta: Optional[Dict[str, str]] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors and metadata of an export file for ``model`` quantized as ``layers``."""
    plan.check_against(model)
    if list(layers) != list(plan.layers):
        raise ExportError("the quantized layers do not match the plan's layers")
    schemes = {q.scheme for q in layers.values()}
    if len(schemes) != 1:
        raise ExportError(f"one quantization scheme per file expected, got {sorted(schemes)}")
    scheme = schemes.pop()
    codes, scales, zps = [], [], []
    for name, q in layers.items():
        if q.nbits != plan.bits[name]:
            raise ExportError(f"layer '{name}' is quantized to {q.nbits} bits, the plan says {plan.bits[name]}")
        codes.append(pack_codes(q.codes, q.nbits))
        scales.append(q.scale.reshape(-1).float())
        zps.append(q.zero_point.reshape(-1))
    state = model.state_dict()
    quantized_keys = {state_key(model, name) for name in layers}
    floats, ints, index = [], [], []
    for key, value in state.items():
        if key in quantized_keys:
            index.append([key, list(value.shape), "q"])
        elif value.is_floating_point():
            floats.append(value.detach().float().reshape(-1).cpu())
            index.append([key, list(value.shape), "f"])
        else:
            ints.append(value.detach().to(torch.int32).reshape(-1).cpu())
            index.append([key, list(value.shape), "i"])
    tensors = {
        "codes": torch.from_numpy(np.concatenate(codes)) if codes else torch.zeros(0, dtype=torch.uint8),
        "scales": torch.cat(scales),
        "floats": torch.cat(floats) if floats else torch.zeros(0),
    }
    if not is_symmetric(scheme):
        tensors["zero_points"] = torch.cat(zps).to(torch.uint8)
    if ints:
        tensors["ints"] = torch.cat(ints)
    check_metadata_fits(plan)
    meta = {"format": EXPORT_FORMAT, "version": str(EXPORT_VERSION), "scheme": scheme,
            "plan": plan.to_json(indent=None), "index": _encode_index(index)}
    meta.update(extra_meta or {})
    if sum(len(k) + len(v) for k, v in meta.items()) > METADATA_LIMIT - 1_000_000:
        raise ExportError(f"the export file's metadata would pass safetensors' {METADATA_LIMIT // 1_000_000} MB limit")
    meta["sha256"] = _digest(tensors, meta)
    return tensors, meta


def save_quantized(path: str | os.PathLike, model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer],
                   extra_meta: Optional[Dict[str, str]] = None) -> int:
    """Write the export file atomically (a full disk leaves the old file and raises one line);
    returns its size in bytes."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors, meta = build_tensors(model, plan, layers, extra_meta)
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=meta), (SafetensorError,))
    return os.path.getsize(path)


def export_bytes(model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer],
                 extra_meta: Optional[Dict[str, str]] = None) -> bytes:
    """The export file's bytes (for a download button)."""
    from safetensors.torch import save

    tensors, meta = build_tensors(model, plan, layers, extra_meta)
    return save(tensors, metadata=meta)


# --- reading ----------------------------------------------------------------------------------
@dataclass
class QuantizedFile:
    plan: Plan
    scheme: str
    layers: Dict[str, QuantizedLayer]
    state: Dict[str, torch.Tensor]  # every non-quantized state entry
    metadata: Dict[str, str]


def _read(path_or_bytes) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load

    name = "export data" if isinstance(path_or_bytes, (bytes, bytearray)) else f"'{os.fspath(path_or_bytes)}'"
    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            tensors = load(bytes(path_or_bytes))
            meta = _bytes_metadata(bytes(path_or_bytes))
        else:
            if not os.path.exists(path_or_bytes):
                raise ExportError(f"export file {name} does not exist")
            if not os.path.isfile(path_or_bytes):
                raise ExportError(f"export file {name} is not a regular file")
            with safe_open(os.fspath(path_or_bytes), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{name} is not a readable safetensors file (corrupt or truncated): "
                          f"{first_line(exc, 150)}") from None
    return tensors, meta


def _bytes_metadata(data: bytes) -> Dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def _verified(path_or_bytes) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], Plan]:
    """Tensors, metadata and plan of an export file whose format, version and checksum hold."""
    tensors, meta = _read(path_or_bytes)
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"not a MixQuant quantized-model file (format is {str(meta.get('format'))[:40]!r})")
    version = meta.get("version", "")
    if version == "1":
        raise ExportError("export file is from an older MixQuant Studio (version 1, its checksum does not cover "
                          "its metadata); export it again")
    if not version.isdigit() or int(version) != EXPORT_VERSION:
        raise ExportError(f"export version {version[:20]!r} is not one this MixQuant Studio reads ({EXPORT_VERSION})")
    for key in ("codes", "scales", "floats"):
        if key not in tensors:
            raise ExportError(f"export file is missing its '{key}' tensor (corrupt)")
    if _digest(tensors, meta) != meta.get("sha256"):
        raise ExportError("export file is corrupt or edited: its metadata and data do not match its checksum")
    return tensors, meta, Plan.from_json(meta.get("plan", ""))


def _check_fields(tensors, meta: Dict[str, str], plan: Plan, model: nn.Module) -> str:
    """Scheme and plan size checked against the plan and the model; returns the scheme."""
    from ..plans.size import float32_bytes, plan_size

    scheme = meta.get("scheme", "")
    if scheme not in QUANTIZERS:
        raise ExportError(f"export file names an unknown quantization scheme {scheme[:40]!r} (corrupt or from a newer version)")
    if is_symmetric(scheme) != ("zero_points" not in tensors):
        raise ExportError(f"export file's zero-points do not fit its '{scheme}' scheme (corrupt)")
    layers = plan.check_against(model)
    expected = plan_size(float32_bytes(model), layers, [plan.bits[l.name] for l in layers], plan.quantizer).to_dict()
    for key in ("plan_mb", "avg_bits"):
        if key in plan.size and not math.isclose(float(plan.size[key]), expected[key], rel_tol=1e-6, abs_tol=1e-9):
            raise ExportError(f"export file's plan says {key} {plan.size[key]}, its bit-widths give {expected[key]:.6g}")
    return scheme


def read_quantized(path_or_bytes, model: nn.Module) -> QuantizedFile:
    """Parse and check an export file against ``model``; ExportError names the first problem."""
    tensors, meta, plan = _verified(path_or_bytes)
    state = model.state_dict()
    index = _decode_index(meta.get("index", ""), _index_limit(state))
    if [e[0] for e in index] != list(state):
        theirs, ours = [e[0] for e in index], list(state)
        diff = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        what = (theirs[diff] if diff < len(theirs) else ours[diff])[:200]
        raise ExportError(f"export file is for another model ({str(plan.model.get('name'))[:80]}): state entry "
                          f"'{what}' differs ({len(theirs)} entries in the file, {len(ours)} in this model)")
    for key, shape, _ in index:
        if list(state[key].shape) != shape:
            raise ExportError(f"export file is for another model ({str(plan.model.get('name'))[:80]}): '{key}' has shape "
                              f"{tuple(shape)} there, {tuple(state[key].shape)} here")
    scheme = _check_fields(tensors, meta, plan, model)
    keys = {name: state_key(model, name) for name in plan.bits}  # the plan was checked against the model
    return QuantizedFile(plan, scheme, _unpack_layers(tensors, plan, scheme, state, keys),
                         _unpack_state(tensors, index, state), meta)


def _unpack_layers(tensors, plan: Plan, scheme: str, state, keys: Dict[str, str]) -> Dict[str, QuantizedLayer]:
    codes = tensors["codes"].numpy()
    scales, zps = tensors["scales"], tensors.get("zero_points")
    layers, c_off, g_off = {}, 0, 0
    for name, b in plan.bits.items():
        shape = tuple(state[keys[name]].shape)
        n = int(np.prod(shape))
        groups = shape[0] if is_per_channel(scheme) and len(shape) > 1 else 1
        nb = packed_bytes(n, b)
        if c_off + nb > len(codes) or g_off + groups > len(scales):
            raise ExportError("export file holds fewer codes or scales than its plan needs (corrupt)")
        q = torch.from_numpy(unpack_codes(codes[c_off:c_off + nb], n, b).reshape(shape).copy())
        gshape = (groups,) + (1,) * (len(shape) - 1) if groups > 1 else ()
        scale = scales[g_off:g_off + groups].reshape(gshape).clone()
        if is_symmetric(scheme):
            zp = torch.full_like(scale, float(2 ** (b - 1)))
        else:
            zp = zps[g_off:g_off + groups].float().reshape(gshape).clone()
        layers[name] = QuantizedLayer(q, scale, zp, b, scheme)
        c_off, g_off = c_off + nb, g_off + groups
    if c_off != len(codes) or g_off != len(scales):
        raise ExportError("export file holds more codes or scales than its plan needs (corrupt)")
    return layers


def _unpack_state(tensors, index, state) -> Dict[str, torch.Tensor]:
    floats, ints = tensors["floats"], tensors.get("ints", torch.zeros(0, dtype=torch.int32))
    out, f_off, i_off = {}, 0, 0
    for key, shape, where in index:
        n = int(np.prod(shape)) if shape else 1
        if where == "f":
            out[key] = floats[f_off:f_off + n].reshape(shape).to(state[key].dtype)
            f_off += n
        elif where == "i":
            out[key] = ints[i_off:i_off + n].reshape(shape).to(state[key].dtype)
            i_off += n
    if f_off != len(floats) or i_off != len(ints):
        raise ExportError("export file's float tensors do not match its index (corrupt)")
    return out


def load_quantized_(model: nn.Module, path_or_bytes) -> QuantizedFile:
    """Load an export file into ``model`` in place: quantized weights and every other tensor."""
    qf = read_quantized(path_or_bytes, model)
    model.load_state_dict(qf.state, strict=False)
    apply_quantized_(model, qf.layers)
    return qf


# --- size check -------------------------------------------------------------------------------
def accounted_bytes(model: nn.Module, plan: Plan, scheme: str) -> int:
    """What size.py charges for ``plan`` stored with ``scheme``."""
    from ..plans.size import float32_bytes, plan_size

    layers = plan.check_against(model)
    s = plan_size(float32_bytes(model), layers, [plan.bits[l.name] for l in layers], scheme)
    return int(round(s.plan_mb * 1e6))


def rtn_layers(model: nn.Module, plan: Plan) -> Dict[str, QuantizedLayer]:
    """Round-to-nearest codes with the plan's own recipe: its scheme, on its calibrated weight
    ranges where it has them (what ``plan.quantize_model_`` computes)."""
    plan.check_against(model)
    return recipe_layers(model, plan.bits, plan.recipe)


def file_layers(path_or_bytes, model: nn.Module, plan: Optional[Plan] = None) -> Tuple[QuantizedFile, List[str]]:
    """Read a (reconstructed) export file and check it carries ``plan``'s bit-widths."""
    qf = read_quantized(path_or_bytes, model)
    if plan is not None and qf.plan.bits != plan.bits:
        diff = next(n for n in plan.bits if qf.plan.bits.get(n) != plan.bits[n]) if set(plan.bits) == set(qf.plan.bits) else None
        raise ExportError("the reconstructed file was made for another plan"
                          + (f": layer '{diff}' has {qf.plan.bits[diff]} bits there, {plan.bits[diff]} in the plan" if diff else ""))
    return qf, list(qf.layers)


def peek_plan(path_or_bytes) -> Plan:
    """The plan recorded in an (intact) export file, to know which model to build before loading it."""
    return _verified(path_or_bytes)[2]


def registry_model_of(plan: Plan) -> str:
    """The registry name an export file's plan records; a file model (or anything that is not a
    registry name) is refused: the user must name the model (``--model``) themselves."""
    from ..models.registry import is_registry_name

    name, source = str(plan.model.get("name", "")), plan.model.get("source")
    if source == "file" or not is_registry_name(name):
        raise ExportError(f"the export file was made from a model file ('{name[:80]}'), not a registry model: "
                          "name the model yourself (--model NAME or FILE)")
    return name


def size_report(path_or_bytes, model: nn.Module) -> Dict[str, object]:
    """File size against the size accounting of its plan and scheme."""
    tensors, meta, plan = _verified(path_or_bytes)
    _check_fields(tensors, meta, plan, model)
    actual = len(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else os.path.getsize(path_or_bytes)
    accounted = accounted_bytes(model, plan, meta["scheme"])
    return {"bytes": actual, "accounted_bytes": accounted, "scheme": meta["scheme"],
            "difference_pct": 100.0 * (actual - accounted) / accounted}


def quantized_model_bytes(model: nn.Module, plan: Plan, reconstructed=None) -> bytes:
    """The export file for ``plan``: round-to-nearest codes, or a ReconResult's learned codes."""
    if reconstructed is None:
        return export_bytes(model, plan, rtn_layers(model, plan))
    from ..recon.reconstruct import recon_metadata

    meta = recon_metadata(reconstructed, getattr(reconstructed, "calib_images", 0))
    return export_bytes(model, plan, reconstructed.layers, meta)
