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
the file describes itself and a mismatched model is named; ``sha256`` over all tensor bytes so a
corrupt file is refused; ``reconstruction`` (JSON, when the codes were learned).

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
from ..plans.plan import Plan
from ..quant.quantizers import QUANTIZERS, is_per_channel, is_symmetric
from ..recon.adaround import QuantizedLayer
from ..recon.reconstruct import apply_quantized_

EXPORT_FORMAT = "mixquant-quantized"
EXPORT_VERSION = 1


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
def _digest(tensors: Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().view(torch.uint8).numpy().tobytes() if tensors[key].numel() else b"")
    return h.hexdigest()[:32]


def _encode_index(index: list) -> str:
    return base64.b64encode(zlib.compress(json.dumps(index, separators=(",", ":")).encode(), 9)).decode()


def _decode_index(text: str) -> list:
    return json.loads(zlib.decompress(base64.b64decode(text)))


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
    floats, ints, index = [], [], []
    for key, value in state.items():
        module_name, _, attr = key.rpartition(".")
        if attr == "weight" and module_name in layers:
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
    meta = {"format": EXPORT_FORMAT, "version": str(EXPORT_VERSION), "scheme": scheme,
            "plan": plan.to_json(indent=None), "index": _encode_index(index), "sha256": _digest(tensors)}
    meta.update(extra_meta or {})
    return tensors, meta


def save_quantized(path: str | os.PathLike, model: nn.Module, plan: Plan, layers: Dict[str, QuantizedLayer],
                   extra_meta: Optional[Dict[str, str]] = None) -> int:
    """Write the export file; returns its size in bytes."""
    from safetensors.torch import save_file

    tensors, meta = build_tensors(model, plan, layers, extra_meta)
    save_file(tensors, str(path), metadata=meta)
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
            if not os.path.isfile(path_or_bytes):
                raise ExportError(f"export file {name} does not exist")
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


def read_quantized(path_or_bytes, model: nn.Module) -> QuantizedFile:
    """Parse and check an export file against ``model``; ExportError names the first problem."""
    tensors, meta = _read(path_or_bytes)
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"not a MixQuant quantized-model file (format is {meta.get('format')!r})")
    if not meta.get("version", "").isdigit() or int(meta["version"]) > EXPORT_VERSION:
        raise ExportError(f"export version {meta.get('version')!r} is not one this MixQuant Studio reads ({EXPORT_VERSION})")
    for key in ("codes", "scales", "floats"):
        if key not in tensors:
            raise ExportError(f"export file is missing its '{key}' tensor (corrupt)")
    if _digest(tensors) != meta.get("sha256"):
        raise ExportError("export file is corrupt: its data does not match its checksum")
    plan = Plan.from_json(meta.get("plan", ""))
    scheme = meta.get("scheme", "")
    if scheme not in QUANTIZERS:
        raise ExportError(f"export file names an unknown quantization scheme {scheme!r} (corrupt or from a newer version)")
    try:
        index = _decode_index(meta["index"])
    except Exception:
        raise ExportError("export file has an unreadable layer index (corrupt)") from None
    state = model.state_dict()
    if [e[0] for e in index] != list(state):
        theirs, ours = [e[0] for e in index], list(state)
        diff = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        what = theirs[diff] if diff < len(theirs) else ours[diff]
        raise ExportError(f"export file is for another model ({plan.model.get('name')}): state entry "
                          f"'{what}' differs ({len(theirs)} entries in the file, {len(ours)} in this model)")
    for key, shape, _ in index:
        if list(state[key].shape) != shape:
            raise ExportError(f"export file is for another model ({plan.model.get('name')}): '{key}' has shape "
                              f"{tuple(shape)} there, {tuple(state[key].shape)} here")
    plan.check_against(model)
    return QuantizedFile(plan, scheme, _unpack_layers(tensors, plan, scheme, state),
                         _unpack_state(tensors, index, state), meta)


def _unpack_layers(tensors, plan: Plan, scheme: str, state) -> Dict[str, QuantizedLayer]:
    codes = tensors["codes"].numpy()
    scales, zps = tensors["scales"], tensors.get("zero_points")
    layers, c_off, g_off = {}, 0, 0
    for name, b in plan.bits.items():
        shape = tuple(state[name + ".weight"].shape)
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
    """Round-to-nearest codes with the plan's own quantizer (what ``plan.quantize_model_`` computes)."""
    from ..recon.reconstruct import nearest_layers

    plan.check_against(model)
    return nearest_layers(model, plan.bits, plan.quantizer)


def file_layers(path_or_bytes, model: nn.Module, plan: Optional[Plan] = None) -> Tuple[QuantizedFile, List[str]]:
    """Read a (reconstructed) export file and check it carries ``plan``'s bit-widths."""
    qf = read_quantized(path_or_bytes, model)
    if plan is not None and qf.plan.bits != plan.bits:
        diff = next(n for n in plan.bits if qf.plan.bits.get(n) != plan.bits[n]) if set(plan.bits) == set(qf.plan.bits) else None
        raise ExportError("the reconstructed file was made for another plan"
                          + (f": layer '{diff}' has {qf.plan.bits[diff]} bits there, {plan.bits[diff]} in the plan" if diff else ""))
    return qf, list(qf.layers)


def peek_plan(path_or_bytes) -> Plan:
    """The plan recorded in an export file (to know which model to build before loading it)."""
    _, meta = _read(path_or_bytes)
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(f"not a MixQuant quantized-model file (format is {meta.get('format')!r})")
    return Plan.from_json(meta.get("plan", ""))


def size_report(path_or_bytes, model: nn.Module) -> Dict[str, object]:
    """File size against the size accounting of its plan and scheme."""
    _, meta = _read(path_or_bytes)
    plan = Plan.from_json(meta.get("plan", ""))
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
