"""``mixquant models``: the model registry, filtered."""
from __future__ import annotations

import json

from .options import add_json_arg


def cmd_models(args) -> None:
    from mixquant_core.models.registry import list_models

    entries = list_models(args.filter, args.source)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    for e in entries:
        print(f"{e.name:40s} {e.source:12s} {e.description}")


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the model registry")
    p.add_argument("--filter", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--source", choices=("builtin", "torchvision", "timm"))
    add_json_arg(p)
    p.set_defaults(run=cmd_models)
