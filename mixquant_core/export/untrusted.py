"""Errors about untrusted ONNX files, and how text from such a file is shown in them."""
from __future__ import annotations

import string

from ..errors import MixQuantError

# Characters a string from the file may show as they are (in a terminal, in HTML, in Markdown);
# any other is written as an escape (\x3c for "<"), so what is shown cannot format or inject.
_SHOWN_AS_IS = frozenset(string.ascii_letters + string.digits + " ._-/+:@,;'()=#%?~")


class OnnxFileError(MixQuantError):
    """An ONNX file is corrupt, hostile, not a MixQuant export, or for another model."""


def _escaped(c: str) -> str:
    if c in _SHOWN_AS_IS:
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def untrusted_text(value, limit: int = 80) -> str:
    """A string from an untrusted file, safe to print or render: cut to ``limit`` characters, and
    everything but plain letters, digits and punctuation escaped."""
    text = str(value)
    shown = "".join(_escaped(c) for c in text[:limit])
    return shown + (f"... ({len(text)} characters)" if len(text) > limit else "")


def shown_dims(dims) -> str:
    """A shape from the file, as [batch, 3, 224, 224] (None: unknown rank)."""
    if dims is None:
        return "an unknown shape"
    return "[" + ", ".join("?" if d is None else untrusted_text(d, 20) for d in list(dims)[:8]) + \
        (", ...]" if len(dims) > 8 else "]")
