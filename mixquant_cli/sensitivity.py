"""``mixquant sensitivity``: what quantizing one part of the model costs, on the evaluation images.
``--activations``: per layer, only that layer's input at 8 bits (issue #20); otherwise one layer
kind at a time at each ``--test-bits`` (paper section 6), as on the app's Sensitivity page."""
from __future__ import annotations

import json

from .inputs import eval_tensors, open_evaluations, use_default_data
from .options import add_data_args, add_model_args, bits_list
from .output import fmt, print_table
from .progress import mode_of, progress


def cmd_sensitivity(args) -> None:
    from mixquant_core.studies.act_sensitivity import act_sensitivity
    from mixquant_core.studies.kind_sensitivity import kind_sensitivity

    use_default_data(args)
    if args.activations and args.act_bits is None:
        args.act_bits = 8  # the ranges the rows quantize with
    ev = open_evaluations(args)
    mode = mode_of(args)
    data = eval_tensors(args, ev.ws, mode)
    with progress(mode, "sensitivity", "plans") as cb:
        rows = act_sensitivity(ev, data, progress=cb) if args.activations else kind_sensitivity(ev, data, args.test_bits,
                                                                                                progress=cb)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
        return
    if args.activations:
        print(f"{ev.ws.loaded.name}: one layer's input at {ev.ws.act_bits} bits ({ev.ws.recipe.acts.method} ranges), "
              f"weights float32, on {len(data)} images; most sensitive first")
        ordered = sorted(rows, key=lambda r: -r.loss_increase)
        print_table(["layer", "kind", "range", "top-1", "drop", "loss increase"],
                    [[r.name, r.kind, f"[{r.lo:.3g}, {r.hi:.3g}]", fmt(r.top1), fmt(r.top1_drop), f"{r.loss_increase:+.4f}"]
                     for r in ordered])
    else:
        print_table(["kind", "bits", "layers", "params", "top-1", "top-5", "loss"],
                    [[r.kind, str(r.bits), str(r.layers), str(r.params), fmt(r.top1), fmt(r.top5), fmt(r.loss, 4)]
                     for r in rows])


def register(subparsers) -> None:
    p = subparsers.add_parser("sensitivity", help="accuracy when one layer kind (or, --activations, one layer's "
                                                  "input) is quantized")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--activations", action="store_true",
                   help="per layer, only its input at 8 bits (ranges calibrated on --calib, weights float32): "
                        "which activations to keep float")
    p.add_argument("--test-bits", type=bits_list, default=[6, 4, 2],
                   help="without --activations: the bit-widths each layer kind is tested at (default 6,4,2)")
    p.set_defaults(run=cmd_sensitivity)
