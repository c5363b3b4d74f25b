"""Exports imported on first use (PEP 562), for package ``__init__`` files: importing one light
module (``mixquant_core.errors``, the results store) must not import torch and every stage with it."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple


def lazy_exports(package: str, exports: Dict[str, Tuple[str, ...]], namespace: dict) -> Tuple[Callable, Callable]:
    """(``__getattr__``, ``__dir__``) for ``package``, whose ``exports`` map a relative module to the
    names it provides; a name is imported when first read, then kept in ``namespace`` (the package's
    globals), so later reads are plain attribute reads."""
    def __getattr__(name: str):
        for module, names in exports.items():
            if name in names:
                value = getattr(importlib.import_module(module, package), name)
                namespace[name] = value
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted({*namespace, *(n for names in exports.values() for n in names)})

    return __getattr__, __dir__
