"""The ``mixquant`` command line. Every command takes ``--json``; bad input exits 2 with one line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import List, Optional

from mixquant_core.errors import MixQuantError, UntrustedCodeError, first_line
from mixquant_core.quant.quantizers import QUANTIZERS

QUANTIZER_CHOICES = tuple(QUANTIZERS)
MAX_SWEEP_STEPS = 10_000  # each step is a plan row: far past any readable table, far below a MemoryError
MAX_MESSAGE = 400  # characters of an error line (a layer name can be megabytes long)


def _bits_list(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,6,4, got {text!r}") from None


def _float_list(text: str) -> List[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 5,20,80, got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--limit 0`` must not mean "everything")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def megabytes(text: str) -> float:
    """An argparse type: a size in MB, >= 0 (0: keep nothing, stream every set)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megabytes, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value
    return parse


def add_trust_code(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", "--allow-pickle", dest="trust_code", action="store_true",
                   help="load TorchScript or pickled-module files, which run their own code (only files you trust; "
                        "loaded in a time- and memory-limited child process first). --allow-pickle: old name")


def check_out(args, *inputs) -> None:
    """``--out`` refused before any work: a folder, unwritable, or one of the command's inputs."""
    from mixquant_core.files import check_output

    if getattr(args, "out", None):
        check_output(args.out, [getattr(args, "model", None), *inputs])


@contextmanager
def progress_bar(enabled: bool, desc: str):
    """A tqdm bar on stderr driven by the core's (done, total, what) callbacks."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int, what: str) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.set_postfix_str(what[-40:], refresh=False)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _add_model_args(p: argparse.ArgumentParser, compute: bool = True) -> None:
    from mixquant_core.models.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or model file (default {DEFAULT_MODEL})")
    p.add_argument("--arch", help="architecture (registry name) of a state-dict file")
    add_trust_code(p)
    p.add_argument("--quantizer", default="asymmetric", choices=QUANTIZER_CHOICES,
                   help="round-to-nearest quantizer (default asymmetric); *-mse: range clipped for least weight MSE")
    p.add_argument("--bits", type=_bits_list, default=[8, 7, 6, 5, 4, 3, 2], help="candidate bit-widths (default 8,7,6,5,4,3,2)")
    p.add_argument("--keep-first-last", action="store_true", help="hold the first and last layer at 8 bits")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="skip layers whose name matches (fnmatch; repeatable)")
    if compute:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when present)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="evaluation folder (labels.txt or class subfolders), or 'imagenette[:DIR]'")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only (N >= 1)")
    p.add_argument("--cache-mb", type=megabytes, default=None, metavar="MB",
                   help="keep the decoded images (uint8, 150 KB a 224 px image) in memory up to MB; a larger set is "
                        "streamed from its files on every pass (default: a quarter of RAM, or $MIXQUANT_CACHE_MB)")
    p.add_argument("--store", metavar="PATH", help="results store (default $MIXQUANT_HOME/results.sqlite, "
                                                   "MIXQUANT_HOME defaulting to ~/.cache/mixquant)")
    p.add_argument("--no-store", action="store_true", help="neither read nor write the results store")
    p.add_argument("--early-stop", action="store_true",
                   help="stop evaluating a plan once its top-1 is surely below half of float32's (error rate 0.001)")
    add_engine_arg(p)
    add_cluster_arg(p)


def cluster_option(text: str) -> str:
    """An argparse type: ``ray`` or ``ray=ADDRESS`` (checked here, connected to later)."""
    from mixquant_core.evaluation.cluster import parse_cluster_option

    try:
        parse_cluster_option(text)
    except MixQuantError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_cluster_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=cluster_option, metavar="ray[=ADDRESS]",
                   help="evaluate as (plan, image shard) tasks on a Ray cluster: 'ray' starts a local one, "
                        "'ray=HOST:PORT' (or ray://HOST:10001, auto) joins a running one; the evaluation folder "
                        "must be at the same path on every node; no early stop there")


def open_cluster(option: Optional[str]):
    """The connected RayCluster for ``--cluster``, or None; an unreachable one is a one-line error."""
    if not option:
        return None
    from mixquant_core.evaluation.cluster import RayCluster, parse_cluster_option

    cluster = RayCluster(parse_cluster_option(option))
    cluster.connect()  # now, before any slow work: a wrong address fails first
    return cluster


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="evaluation engine (default auto: ONNX Runtime on CPU, torch on CUDA)")


def notice(message: str) -> None:
    """A one-line notice on stderr (e.g. an engine falling back to torch)."""
    print(f"mixquant: note: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixquant", description="MixQuant: per-layer bit-width search (QE <= QEM x QE(8 bit)).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--filter", default="*", help="fnmatch pattern, e.g. 'resnet*'")
    p.add_argument("--source", choices=("builtin", "torchvision", "timm"))
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("qe", help="print the QE table (layers x bit-widths)")
    _add_model_args(p)

    p = sub.add_parser("search", help="choose bit-widths for a QEM (or a size budget) and write the plan")
    _add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--qem", type=float, help="quantization error multiplier, >= 1")
    g.add_argument("--max-mb", type=float, help="largest model size allowed, in MB")
    g.add_argument("--max-avg-bits", type=float, help="largest average bit-width allowed")
    g.add_argument("--max-drop", type=float, help="largest top-1 drop from float32 allowed, in points (needs --data)")
    p.add_argument("--out", help="write the plan JSON here (default: stdout)")

    p = sub.add_parser("evaluate", help="top-1/top-5/loss of float32, int8 or a plan")
    _add_model_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plan", help="plan JSON to apply")
    g.add_argument("--int8", action="store_true", help="all layers at 8 bits")
    _add_data_args(p)

    p = sub.add_parser("sweep", help="Table-2 style sweep over QEMs (each distinct plan evaluated once)")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--qems", type=_float_list, help="explicit QEMs, e.g. 5,20,80")
    p.add_argument("--qem-min", type=float, default=1.0)
    p.add_argument("--qem-max", type=float, default=None, help="default: where the last layer reaches its lowest bit-width")
    p.add_argument("--steps", type=bounded_int(1, MAX_SWEEP_STEPS), default=12,
                   help=f"QEMs on the default grid (1..{MAX_SWEEP_STEPS}, default 12)")
    p.add_argument("--out", help="also write the table as CSV")
    import importlib

    for module in EXTENSIONS:
        importlib.import_module(module).register(sub, COMMANDS)
    return parser


def _workspace(args, progress: bool = True):
    from mixquant_core.models.registry import load_model
    from mixquant_core.workspace import Workspace

    from mixquant_core.evaluation.store import open_store

    store = open_store(args.store, not args.no_store) if hasattr(args, "store") else None  # a bad store fails first
    cluster = open_cluster(getattr(args, "cluster", None))
    loaded = load_model(args.model, arch=args.arch, trust_code=args.trust_code)
    return Workspace(loaded, args.quantizer, args.bits, args.keep_first_last, args.exclude,
                     device=getattr(args, "device", "cpu"), engine=getattr(args, "engine", "auto"), notify=notice,
                     store=store, early_stop=getattr(args, "early_stop", False), cluster=cluster)


def _eval_tensors(args, ws, show: bool):
    from mixquant_core.data.image_sets import open_image_folder, open_imagenette
    from mixquant_core.data.load import load_tensors

    if args.data.startswith("imagenette"):
        root = args.data.partition(":")[2] or "imagenette-data"
        images = open_imagenette(root)
    else:
        images = open_image_folder(args.data)
    images = images.subset(args.limit)
    with progress_bar(show, "decode") as cb:
        data = load_tensors(images, ws.loaded.preprocess, cb, getattr(args, "cache_mb", None))
    if data.skipped:
        print(f"warning: skipped {len(data.skipped)} unreadable image(s), e.g. {data.skipped[0]}", file=sys.stderr)
    if not hasattr(data, "images") and show:
        print(f"mixquant: note: {len(data)} images do not fit the --cache-mb budget: each pass decodes them again "
              "from their files (memory stays flat)", file=sys.stderr)
    return data


def plan_notice(plan, model) -> None:
    """Check a loaded plan against the model, recompute its size, and say on stderr (one line)
    how many quantizable layers it leaves float32."""
    from mixquant_core.plans.plan import float32_notice

    left = plan.fit(model)
    if left:
        print(float32_notice(left), file=sys.stderr)


def calibration_tensors(folder: str, n: int, preprocess, show: bool):
    """``n`` calibration images spread over ``folder`` (labelled or plain), decoded with a progress bar."""
    from mixquant_core.data.load import load_tensors
    from mixquant_core.data.image_sets import open_calibration_folder

    if n < 1:
        raise MixQuantError(f"--calib-images must be at least 1, got {n}")
    images = open_calibration_folder(folder, n)
    with progress_bar(show, "decode calibration") as cb:
        return load_tensors(images, preprocess, cb)


def _fmt(v, nd=2) -> str:
    if v is None:
        return "N/A"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.{nd}f}"
    return str(v)


def _with_ci(value: float, ci) -> str:
    """"81.00 [73.2, 87.1]": a percentage with its 95 % interval."""
    return _fmt(value) if ci is None else f"{value:.2f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def _versus(row: dict) -> List[str]:
    """Table cells for the paired comparison with float32: delta [interval], McNemar p, early stop."""
    vs = row.get("vs_float32")
    if not vs:
        return ["", "", ""]
    from mixquant_core.evaluation.statistics import within_noise

    lo, hi = vs["delta_ci"]
    noise = " ~" if within_noise(vs) else ""
    stopped = f"stopped early after {row['images']} images" if row.get("stopped_early") else ""
    return [f"{vs['delta_top1']:+.2f} [{lo:+.1f}, {hi:+.1f}]{noise}", f"{vs['p_value']:.2g}", stopped]


VERSUS_HEADERS = ["vs float32 [95 %]", "p", ""]
VERSUS_NOTE = ("top-1/top-5: 95 % Wilson intervals; vs float32: paired difference on the same images, Newcombe "
               "interval, McNemar exact p; ~ = within noise (the interval holds 0)")


def _print_table(headers: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def cmd_models(args) -> None:
    from mixquant_core.models.registry import list_models

    entries = list_models(args.filter, args.source)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    for e in entries:
        print(f"{e.name:40s} {e.source:12s} {e.description}")


def cmd_qe(args) -> None:
    ws = _workspace(args)
    with progress_bar(not args.no_progress, "QE table") as cb:
        table = ws.table(cb)
    if args.json:
        out = {"model": ws.loaded.name, **table.to_dict()}
        print(json.dumps(out, indent=2))
        return
    headers = ["layer", "kind", "params"] + [f"QE@{b}" for b in table.bits]
    rows = [[l.name, l.kind, str(l.params)] + [f"{table.qe[i, j]:.3e}" for j in range(len(table.bits))]
            for i, l in enumerate(table.layers)]
    _print_table(headers, rows)


def cmd_search(args) -> None:
    check_out(args)
    ws = _workspace(args)
    with progress_bar(not args.no_progress, "QE table") as cb:
        ws.table(cb)
    qem = args.qem if args.qem is not None else ws.qem_for_budget(args.max_mb, args.max_avg_bits)
    plan = ws.plan(qem)
    text = plan.to_json()
    if args.out:
        plan.save(args.out)
        s = plan.size
        msg = (f"wrote {args.out}: QEM {qem:g}, {s['avg_bits']:.2f} average bits, "
               f"{s['plan_mb']:.2f} MB of {s['float32_mb']:.2f} MB ({s['compression']:.2f}x)")
        print(json.dumps({"out": args.out, "qem": qem, "size": s}) if args.json else msg)
    else:
        print(text)


def cmd_evaluate(args) -> None:
    from mixquant_core.plans.plan import Plan

    plan = Plan.load(args.plan) if args.plan else None  # a bad plan fails before any slow work
    ws = _workspace(args)
    if plan:
        plan_notice(plan, ws.loaded.model)
    data = _eval_tensors(args, ws, not args.no_progress)
    with progress_bar(not args.no_progress, "evaluate") as cb:
        ref = ws.evaluate_bits(None, data, cb) if (plan or args.int8) else None  # the paired comparison's other side
        if plan:
            m = ws.evaluate_plan(plan, data, cb)
        else:
            m = ws.evaluate_bits(ws.uniform(8) if args.int8 else None, data, cb)
    out = m.summary(ref)
    if args.json:
        print(json.dumps({**out, "from_store": ws.from_store}))
        return
    from mixquant_core.evaluation.statistics import describe_difference

    what = "plan " + args.plan if args.plan else "int8" if args.int8 else "float32"
    print(f"{ws.loaded.name} {what}: top-1 {_with_ci(m.top1, out['top1_ci'])} %  top-5 {_with_ci(m.top5, out['top5_ci'])} %  "
          f"loss {m.loss:.4f}  ({m.images} images{', stopped early' if m.stopped_early else ''}"
          f"{', from the results store' if ws.from_store and not ws.evaluated_now else ''})")
    if ref is not None:
        print("vs float32: " + describe_difference(m.versus(ref)))


def cmd_sweep(args) -> None:
    from mixquant_core.plans.search import default_qem_grid

    t0 = time.perf_counter()
    check_out(args, args.data)
    ws = _workspace(args)
    show = not args.no_progress
    with progress_bar(show, "QE table") as cb:
        table = ws.table(cb)
    qems = args.qems if args.qems else default_qem_grid(table, args.steps, args.qem_min, args.qem_max)
    t_decode = time.perf_counter()
    data = _eval_tensors(args, ws, show)
    t_eval = time.perf_counter()
    with progress_bar(show, "sweep") as cb:
        rows = ws.sweep(data, qems, cb)
    elapsed = time.perf_counter() - t0
    decode_s, eval_s = t_eval - t_decode, time.perf_counter() - t_eval
    write_csv(args.out, rows)
    if args.json:
        print(json.dumps({"model": ws.loaded.name, "quantizer": ws.quantizer, "images": len(data),
                          "distinct_plans": ws.distinct_evaluated, "evaluated": ws.evaluated_now,
                          "from_store": ws.from_store, "seconds": elapsed, "decode_seconds": decode_s,
                          "evaluate_seconds": eval_s, "engine": ws.engine.name, "engine_label": ws.engine_label(),
                          "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    headers = ["method", "QEM", "bit-widths", "top-1 [95 %]", "top-5 [95 %]", "loss", "quant MSE", "avg bits", "size MB", "x"]
    body = [[r.method, _fmt(r.qem, 3) if r.qem is not None else "N/A", r.bit_set, _with_ci(r.top1, r.top1_ci),
             _with_ci(r.top5, r.top5_ci), _fmt(r.loss, 3), _fmt(r.quant_mse), _fmt(r.avg_bits), _fmt(r.size_mb),
             _fmt(r.compression)] + _versus(r.to_dict()) for r in rows]
    _print_table(headers + VERSUS_HEADERS, body)
    print(f"\n{VERSUS_NOTE}\n{ws.loaded.name}, {ws.quantizer}, {len(data)} images, {len(qems)} QEMs, "
          f"{ws.distinct_evaluated} distinct plans (float32 included): {ws.evaluated_now} evaluated, "
          f"{ws.from_store} from the results store, {elapsed:.1f} s on {ran_on(ws)} "
          f"(decode {decode_s:.1f} s, evaluation {eval_s:.1f} s with {ws.engine_label()})")


def ran_on(ws) -> str:
    """Where the evaluations ran, for the summary line."""
    return ws.cluster.describe() if ws.cluster is not None else str(ws.device)


def write_csv(path: Optional[str], rows) -> None:
    """The rows (sweep or comparison) as CSV at ``path``, intervals as plain columns; nothing without a path."""
    from mixquant_core.files import atomic_write
    from mixquant_core.studies.tradeoff import rows_to_csv

    if path:
        atomic_write(path, rows_to_csv(rows))


COMMANDS = {"models": cmd_models, "qe": cmd_qe, "search": cmd_search, "evaluate": cmd_evaluate, "sweep": cmd_sweep}
# Feature modules add their own sub-commands/options: each has register(subparsers, COMMANDS).
EXTENSIONS = ("mixquant_cli.reconstruct", "mixquant_cli.compare", "mixquant_cli.target", "mixquant_cli.results",
              "mixquant_cli.report")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except UntrustedCodeError as exc:
        _error(f"{exc}; pass --trust-code to load it, only if you trust the file")
        return 2
    except MixQuantError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("mixquant: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        _error("input nested too deeply to read (a JSON file with thousands of nested levels?)")
        return 2
    except MemoryError:
        _error("out of memory: the input is too large for this machine")
        return 2
    except (OSError, RuntimeError, ValueError) as exc:  # anything else the user's input can trigger
        _error(f"{type(exc).__name__}: {first_line(exc, MAX_MESSAGE)}")
        return 2
    return 0


def _error(message: str) -> None:
    """One line on stderr, however long or multi-line the message was."""
    line = " ".join(message.split())
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE] + f"... ({len(line)} characters)"
    print(f"mixquant: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
