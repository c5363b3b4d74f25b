"""A layer's weight codes bit-packed in an ONNX graph, unpacked by standard ops that ONNX Runtime
and OpenVINO evaluate once, when they build their session (constant folding): the file is as small
as the size accounting says, and the model then runs on float32 weights at float32 speed.

Layout of a layer whose weight initializer is ``K`` (``b`` bits, ``n`` weights of shape ``S``):

* ``K_packed``      uint8 [ceil(n*b/8), 1]: the codes, little-endian bit order, ``packed.pack_codes``
                    (the safetensors export's own packing);
* ``K_scale``       float32 [C, 1, ...] per output channel or [] per tensor;
* ``K_zero_point``  uint8 of the scale's shape (affine schemes) or [] (symmetric schemes: 2^(b-1),
                    the codes being stored unsigned, ``codes.unsigned_grid``);
* ``K_bit_values``  float32 [b, 1] = 1, 2, 4, ..: a code's value from its bits; ``K_bit_count``
                    int64 [1] = n*b; ``K_code_shape`` int64 [2] = (n, b); ``K_shape`` int64 = S.

and the nodes ``unpack_tag(K)_*``: BitwiseAnd(1, 2, .., 128) and Min(1) make the bits, Reshape/Slice
drop the last byte's padding, Reshape to [n, b], Cast and a MatMul with ``K_bit_values`` give the
codes as float32, Reshape to S, then (codes - zero_point) * scale: the arithmetic of
``quantizers.dequantize``, so the weights equal the fake-quantized ones bit for bit. No
DequantizeLinear is left: ONNX Runtime keeps a weight's DequantizeLinear unfolded (for its QDQ
fusions) and dequantizes it on every run (4x slower than float32 on Lite0, issue #20); these
ops it folds. The unpacking needs 4*n*b bytes once, while the session is built.

A reader rebuilds the nodes and small constants from (K, b, S, scale shape) and requires the
graph's to be exactly those (``read_packed_layers``): a packed layer cannot hide other operators.
The nodes are matched by structure, from the one that makes ``K`` back to the initializers, not by
name: the export's last pass (onnx_compact.py) renames their intermediate values and drops their
names, and files written before it (the ``unpack_tag`` names below) read the same way.

Files written before 2026-12-07 make the bits with BitShift(RIGHT, 0..7) and BitwiseAnd(1); they
still read (``LEGACY``). OpenVINO's ONNX reader turns BitShift into an integer Divide, which its CPU
plugin computes in float and rounds where it does not fold the weights first (a Gemm's weights, as
it keeps a MatMul's weight "decompression" at run time): Lite0's classifier then computed other
numbers in OpenVINO than in ONNX Runtime (top-1 53 % against 80 %). A mask and a Min are exact
however a runtime computes them.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..quant.codes import QuantizedLayer
from ..models.onnx_qdq import node_users
from .untrusted import OnnxFileError, untrusted_text

PACKED = "_packed"
SHARED_MASKS, SHARED_SHIFTS, SHARED_ONE, SHARED_FLAT, SHARED_START = (
    "mixquant_unpack_masks", "mixquant_unpack_shifts", "mixquant_unpack_one", "mixquant_unpack_flat", "mixquant_unpack_start")
SHARED = (SHARED_MASKS, SHARED_SHIFTS, SHARED_ONE, SHARED_FLAT, SHARED_START)  # SHIFTS: legacy files only
SMALL = ("_bit_values", "_bit_count", "_code_shape", "_shape")  # per-layer constants a reader rebuilds


def shared_constants():
    """The graph-wide constants every packed layer's unpacking reads."""
    from onnx import numpy_helper

    return [numpy_helper.from_array((2 ** np.arange(8)).astype(np.uint8), SHARED_MASKS),
            numpy_helper.from_array(np.array(1, dtype=np.uint8), SHARED_ONE),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), SHARED_FLAT),
            numpy_helper.from_array(np.array([0], dtype=np.int64), SHARED_START)]


def legacy_shared_constants():
    """The shared constants of files written before the masks (see the module docstring)."""
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.arange(8, dtype=np.uint8), SHARED_SHIFTS)] + shared_constants()[1:]


def _small_constants(key: str, nbits: int, shape: Tuple[int, ...]):
    from onnx import numpy_helper

    n = math.prod(shape)
    return [numpy_helper.from_array((2.0 ** np.arange(nbits, dtype=np.float32)).reshape(nbits, 1), key + SMALL[0]),
            numpy_helper.from_array(np.array([n * nbits], dtype=np.int64), key + SMALL[1]),
            numpy_helper.from_array(np.array([n, nbits], dtype=np.int64), key + SMALL[2]),
            numpy_helper.from_array(np.array(shape, dtype=np.int64), key + SMALL[3])]


def unpack_tag(key: str) -> str:
    """The short prefix of ``key``'s unpacking nodes and tensors (a hash of it: the names are
    written a dozen times a layer, and a key's length 8 bytes at a time would be 0.1 MB on Lite0)."""
    return "u" + hashlib.sha1(key.encode()).hexdigest()[:10]


def unpack_nodes(key: str, legacy: bool = False):
    """The nodes that compute initializer-free ``key`` (the float weight) from its packed codes
    (``legacy``: as files written before the masks did it)."""
    from onnx import TensorProto, helper

    u = unpack_tag(key)
    if legacy:
        bits = [("BitShift", [key + PACKED, SHARED_SHIFTS], {"direction": "RIGHT"}),
                ("BitwiseAnd", [u + "_0", SHARED_ONE], {})]
    else:  # byte & 2^k is 0 or 2^k, its Min with 1 the bit
        bits = [("BitwiseAnd", [key + PACKED, SHARED_MASKS], {}), ("Min", [u + "_0", SHARED_ONE], {})]
    steps = bits + [("Reshape", [u + "_1", SHARED_FLAT], {}),
                    ("Slice", [u + "_2", SHARED_START, key + SMALL[1]], {}),
                    ("Reshape", [u + "_3", key + SMALL[2]], {}),
                    ("Cast", [u + "_4"], {"to": TensorProto.FLOAT}),
                    ("MatMul", [u + "_5", key + SMALL[0]], {}),
                    ("Reshape", [u + "_6", key + SMALL[3]], {}),
                    ("Cast", [key + "_zero_point"], {"to": TensorProto.FLOAT}),
                    ("Sub", [u + "_7", u + "_8"], {}),
                    ("Mul", [u + "_9", key + "_scale"], {})]
    return [helper.make_node(op, inputs, [key if k == len(steps) - 1 else f"{u}_{k}"], name=f"{u}_{k}", **attrs)
            for k, (op, inputs, attrs) in enumerate(steps)]


def packed_layer(key: str, q: QuantizedLayer, symmetric: bool):
    """Initializers and nodes of one layer (see the module docstring); ``q`` holds unsigned codes."""
    from onnx import numpy_helper

    from .packed import pack_codes

    shape = tuple(int(d) for d in q.codes.shape)
    packed = pack_codes(q.codes, q.nbits).reshape(-1, 1)
    per_channel = q.scale.numel() > 1
    scale_shape = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else ()
    scale = q.scale.float().reshape(scale_shape).numpy()
    if symmetric:  # every zero-point is 2^(b-1): one byte
        zero_point = np.array(2 ** (q.nbits - 1), dtype=np.uint8)
    else:
        zero_point = q.zero_point.round().to(torch.uint8).reshape(scale_shape).numpy()
    inits = [numpy_helper.from_array(packed, key + PACKED), numpy_helper.from_array(scale, key + "_scale"),
             numpy_helper.from_array(zero_point, key + "_zero_point")] + _small_constants(key, q.nbits, shape)
    return inits, unpack_nodes(key)


@dataclass(frozen=True)
class PackedLayer:
    """A packed layer as the graph stores it (checked against its own template)."""
    key: str
    nbits: int
    shape: Tuple[int, ...]
    scale_shape: Tuple[int, ...]
    zero_point_shape: Tuple[int, ...]

    def tensors(self) -> List[str]:
        return [self.key + s for s in (PACKED, "_scale", "_zero_point") + SMALL]

    def codes(self, inits) -> np.ndarray:
        from onnx import numpy_helper

        from .packed import unpack_codes

        packed = numpy_helper.to_array(inits[self.key + PACKED]).reshape(-1)
        return unpack_codes(packed, math.prod(self.shape), self.nbits).reshape(self.shape)


def _array(init, name: str, key: str) -> np.ndarray:
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(init)
    except Exception:
        raise OnnxFileError(f"{name}: the packed weight '{untrusted_text(key)}' has unreadable constants (corrupt)") from None


def _same_op(node, want) -> bool:
    """``node`` is ``want``'s operator with its attributes and as many inputs and outputs; names
    (the node's, its values') are not compared."""
    def bare(n):
        copy = type(n)()
        copy.CopyFrom(n)
        copy.name = ""
        del copy.input[:], copy.output[:]
        return copy.SerializeToString(deterministic=True)

    return len(node.input) == len(want.input) and len(node.output) == len(want.output) and bare(node) == bare(want)


def matched_nodes(graph, template, producers: Dict[str, int], users: Dict[str, List[int]]):
    """Positions in ``graph.node`` of the nodes that compute ``template``'s last output as
    ``template`` does, or None: walking back from that output's producer, each node is the
    template's operator, reads the same initializers, and reads each intermediate value from the
    node matched to its template producer, as that value's only reader (no other operator sees the
    unpacking's partial results)."""
    made = {out: k for k, node in enumerate(template) for out in node.output}
    got: List[Optional[int]] = [None] * len(template)
    got[-1] = producers.get(template[-1].output[0])
    for k in reversed(range(len(template))):  # every intermediate is read by a later template node
        if got[k] is None or not _same_op(graph.node[got[k]], template[k]):
            return None
        for have, need in zip(graph.node[got[k]].input, template[k].input):
            if need not in made:  # an initializer: the very one
                if have != need:
                    return None
            elif users.get(have) != [got[k]] or got[made[need]] is not None or producers.get(have) is None:
                return None
            else:
                got[made[need]] = producers[have]
    return got if len(set(got)) == len(got) else None


def read_packed_layers(graph, name: str) -> Dict[str, PackedLayer]:
    """Weight key -> PackedLayer for every ``*_packed`` initializer; its unpacking nodes and small
    constants must be exactly those ``packed_layer`` writes, else a one-line OnnxFileError."""
    from onnx import TensorProto

    inits = {i.name: i for i in graph.initializer}
    expected = {t.name: t.SerializeToString() for t in legacy_shared_constants() + shared_constants()}
    for shared in SHARED:  # every packed layer unpacks through them: an edit would change them all
        if shared in inits and inits[shared].SerializeToString() != expected[shared]:
            raise OnnxFileError(f"{name}: the unpacking constant '{shared}' is edited (corrupt or edited)")
    producers = {out: k for k, node in enumerate(graph.node) for out in node.output}  # positions, as users'
    users = node_users(graph)
    out: Dict[str, PackedLayer] = {}
    for init_name in inits:
        if not init_name.endswith(PACKED):
            continue
        key = init_name[: -len(PACKED)]
        shown = untrusted_text(key)
        needed = [key + s for s in ("_scale", "_zero_point") + SMALL]
        if any(n not in inits for n in needed) or inits[init_name].data_type != TensorProto.UINT8:
            raise OnnxFileError(f"{name}: the packed weight '{shown}' lacks its scale, zero-point or shape (corrupt or edited)")
        bit_values = _array(inits[key + SMALL[0]], name, key)
        shape = tuple(int(d) for d in _array(inits[key + SMALL[3]], name, key).reshape(-1))
        nbits = int(bit_values.shape[0]) if bit_values.ndim == 2 else 0
        if not 2 <= nbits <= 8 or not shape or min(shape) < 1:
            raise OnnxFileError(f"{name}: the packed weight '{shown}' claims {nbits} bits and shape {list(shape)} (corrupt or edited)")
        for want in _small_constants(key, nbits, shape):
            if inits[want.name].SerializeToString() != want.SerializeToString():
                raise OnnxFileError(f"{name}: the packed weight '{shown}' has an edited constant '{untrusted_text(want.name)}'")
        if all(matched_nodes(graph, unpack_nodes(key, legacy), producers, users) is None for legacy in (False, True)):
            raise OnnxFileError(f"{name}: the packed weight '{shown}' is not unpacked as MixQuant writes it "
                                "(its unpacking nodes missing, edited or read by other nodes)")
        n = math.prod(shape)
        if list(inits[init_name].dims) != [math.ceil(n * nbits / 8), 1]:
            raise OnnxFileError(f"{name}: the packed weight '{shown}' holds {list(inits[init_name].dims)} bytes, "
                                f"{math.ceil(n * nbits / 8)} for {n} {nbits}-bit codes (corrupt or truncated)")
        scale, zp = inits[key + "_scale"], inits[key + "_zero_point"]
        if scale.data_type != TensorProto.FLOAT or zp.data_type != TensorProto.UINT8:
            raise OnnxFileError(f"{name}: the packed weight '{shown}' has a scale or zero-point of the wrong type")
        out[key] = PackedLayer(key, nbits, shape, tuple(int(d) for d in scale.dims), tuple(int(d) for d in zp.dims))
    return out
