"""The parser's building blocks: argparse types (a bad value is argparse's one usage error, exit 2)
and the argument groups several commands share. Imports no torch: the parser is built for
``--help`` too, so anything slow is imported only when a value is parsed or a command runs."""
from __future__ import annotations

import argparse
from typing import List

from .choices import ACT_BITS, ACT_METHODS, DEFAULT_ACT_METHOD, DEFAULT_MODEL, QUANTIZERS, RANGES


def bits_list(text: str) -> List[int]:
    """An argparse type: comma-separated bit-widths, e.g. ``8,6,4``."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,6,4, got {text!r}") from None


def number(name: str):
    """An argparse type for the setting ``name``: parsed and bounded by ``mixquant_core.numbers``, the
    one parser every option, environment variable and app field shares."""
    def parse(text: str):
        from mixquant_core.numbers import BOUNDS

        try:
            return BOUNDS[name].parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def number_list(name: str):
    """An argparse type: comma-separated numbers, e.g. ``5,20,80``, each bounded as ``name``."""
    one = number(name)

    def parse(text: str) -> list:
        values = [one(t) for t in text.split(",") if t.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 5,20,80, got {text!r}")
        return values
    parse.__name__ = f"{name} list"
    return parse


def name_list(text: str) -> List[str]:
    """An argparse type: comma-separated names, empty ones dropped."""
    return [name for name in text.split(",") if name]


def cluster_option(text: str) -> str:
    """An argparse type: ``ray`` or ``ray=ADDRESS`` (checked here, connected to later)."""
    from mixquant_core.errors import MixQuantError
    from mixquant_core.evaluation.cluster import parse_cluster_option

    try:
        parse_cluster_option(text)
    except MixQuantError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_progress_args(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``; neither: bars on a terminal, one line per stage elsewhere."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true",
                   help="bars even when stderr is not a terminal (default: bars on a terminal, else a line per stage)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")


def add_trust_code(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", "--allow-pickle", dest="trust_code", action="store_true",
                   help="load TorchScript or pickled-module files, which run their own code (only files you trust; "
                        "loaded in a time- and memory-limited child process first). --allow-pickle: old name")


def add_model_args(p: argparse.ArgumentParser, compute: bool = True) -> None:
    """The model, its quantization, the device, ``--json`` and the progress flags."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or model file (default {DEFAULT_MODEL})")
    p.add_argument("--arch", help="architecture (registry name) of a state-dict file")
    add_trust_code(p)
    p.add_argument("--quantizer", default="asymmetric", choices=QUANTIZERS,
                   help="round-to-nearest quantizer (default asymmetric); *-mse: range clipped for least weight MSE")
    p.add_argument("--bits", type=bits_list, default=[8, 7, 6, 5, 4, 3, 2], help="candidate bit-widths (default 8,7,6,5,4,3,2)")
    p.add_argument("--keep-first-last", action="store_true", help="hold the first and last layer at 8 bits")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="skip layers whose name matches (fnmatch; repeatable)")
    if compute:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when present)")
    add_ranges_args(p)
    add_act_args(p)
    add_json_arg(p)
    add_progress_args(p)


def add_ranges_args(p: argparse.ArgumentParser) -> None:
    """``--ranges`` and the calibration images that loss-aware ranges are chosen on."""
    p.add_argument("--ranges", choices=RANGES, default=RANGES[0],
                   help="weight ranges: from the weights (the quantizer's own, default) or loss-aware: each layer's "
                        "clipping per grid row and bit-width of least output error on --calib images")
    add_calib_args(p)


def add_act_args(p: argparse.ArgumentParser) -> None:
    """Activation quantization (issue #20): the inputs of the quantized layers, ranges calibrated on ``--calib``."""
    p.add_argument("--act-bits", type=int_choice("--act-bits", ACT_BITS), default=None, metavar="{8}",
                   help="also quantize every quantized layer's input to this many bits (per tensor, uint8 grid as "
                        "ONNX QuantizeLinear), ranges calibrated on --calib (default: float activations)")
    p.add_argument("--act-range", choices=ACT_METHODS, default=None,
                   help=f"how --act-bits calibrates each input's range (default {DEFAULT_ACT_METHOD}): min/max, "
                        "percentile (outliers clipped) or least quantization MSE")
    p.add_argument("--act-keep-float", nargs="+", default=[], metavar="NAME",
                   help="layers whose input stays float with --act-bits (pinned in the plan)")
    p.add_argument("--act-outputs", action=argparse.BooleanOptionalAction, default=True,
                   help="with --act-bits, also quantize the tensors that let a runtime run the whole model as integer "
                        "kernels: block inputs read by a residual Add, the outputs of the convs into an Add or a pool "
                        "(default: on; --no-act-outputs quantizes the layers' inputs only)")


def int_choice(option: str, allowed: tuple):
    """An argparse type: one of ``allowed`` (integers), written as text."""
    def parse(text: str) -> int:
        if text.strip() not in {str(a) for a in allowed}:
            raise argparse.ArgumentTypeError(f"{option} must be one of {', '.join(map(str, allowed))}, got {text!r}")
        return int(text)
    parse.__name__ = option
    return parse


def add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH", help="results store (default $MIXQUANT_HOME/results.sqlite, "
                                                   "MIXQUANT_HOME defaulting to ~/.cache/mixquant)")
    p.add_argument("--no-store", action="store_true", help="neither read nor write the results store")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The evaluation images (default: $MIXQUANT_DATA's set, as in the app), the store, the engine."""
    p.add_argument("--data", help="evaluation folder (labels.txt or class subfolders), or 'imagenette[:DIR]' "
                                  "(default $MIXQUANT_DATA/imagenet-val-1300, else $MIXQUANT_DATA)")
    p.add_argument("--limit", type=number("limit"), default=None, help="evaluate the first N images only (N >= 1)")
    p.add_argument("--cache-mb", type=number("cache_mb"), default=None, metavar="MB",
                   help="keep the decoded images (uint8, 150 KB a 224 px image) in memory up to MB; a larger set is "
                        "streamed from its files on every pass (default: a quarter of RAM, or $MIXQUANT_CACHE_MB)")
    add_store_args(p)
    p.add_argument("--early-stop", action="store_true",
                   help="stop evaluating a plan once its top-1 is surely below half of float32's (error rate 0.001)")
    add_engine_arg(p)
    add_cluster_arg(p)


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="evaluation engine (default auto: ONNX Runtime on CPU, torch on CUDA)")


def add_cluster_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=cluster_option, metavar="ray[=ADDRESS]",
                   help="evaluate as (plan, image shard) tasks on a Ray cluster: 'ray' starts a local one, "
                        "'ray=HOST:PORT' (or ray://HOST:10001, auto) joins a running one; the evaluation folder "
                        "must be at the same path on every node; no early stop there")


def add_calib_args(p: argparse.ArgumentParser) -> None:
    """Calibration images of the Fisher cost (allocate, sweep --compare, search --max-drop) and of
    loss-aware ranges and the activation ranges (--act-bits): every command that builds a Workspace);
    added once per parser."""
    if "--calib" in p._option_string_actions:
        return
    p.add_argument("--calib", help="calibration images for the Fisher cost, --ranges loss and the activation ranges "
                                   "(labelled folder, or plain images: the model's predictions stand in); "
                                   "default $MIXQUANT_DATA/imagenet-calib-1000")
    p.add_argument("--calib-images", type=number("calib_images"), default=64, help="calibration images, spread over the folder (default 64)")
