"""What the commands read, built from their arguments: the Workspace (model, quantizer, store,
cluster), the evaluation and calibration images, and the checks of a loaded plan. The core is
imported inside each function, so that importing this module (to build the parser) stays cheap."""
from __future__ import annotations

import sys
from typing import Optional

from mixquant_core.errors import MixQuantError

from .output import check_out, notice
from .progress import OFF, mode_of, progress

NO_DATA = "no evaluation images: pass --data DIR (or set MIXQUANT_DATA)"


def eval_folder(data: Optional[str], missing: str = NO_DATA) -> str:
    """``--data``, else $MIXQUANT_DATA's evaluation set (as in the app); ``missing`` when neither is there."""
    if data:
        return data
    from mixquant_core.data.image_sets import default_eval_dir

    folder = default_eval_dir()
    if folder is None:
        raise MixQuantError(missing)
    return folder


def use_default_data(args, missing: str = NO_DATA) -> None:
    """Fill ``args.data`` with the default evaluation set when it was not given (said on stderr
    unless ``--no-progress``), so that every later step sees the folder actually used."""
    given = args.data
    args.data = eval_folder(given, missing)
    if not given and not args.no_progress:
        notice(f"no --data: evaluating {args.data} ($MIXQUANT_DATA)")


def open_cluster(option: Optional[str]):
    """The connected RayCluster for ``--cluster``, or None; an unreachable one is a one-line error."""
    if not option:
        return None
    from mixquant_core.evaluation.cluster import RayCluster, parse_cluster_option

    cluster = RayCluster(parse_cluster_option(option))
    cluster.connect()  # now, before any slow work: a wrong address fails first
    return cluster


def open_evaluations(args):
    """This command's Evaluations: the Workspace of the model and quantization options (``.ws``), with
    the results store and early stop the options name, on the cluster they name (a bad store or an
    unreachable cluster fails before the model is loaded)."""
    from mixquant_core.evaluation.store import open_store
    from mixquant_core.evaluations import Evaluations
    from mixquant_core.models.registry import load_model
    from mixquant_core.workspace import Workspace

    ranges = getattr(args, "ranges", "weights")
    if ranges == "loss" and calib_dir(args) is None:  # before any slow work
        raise MixQuantError("--ranges loss needs calibration images: pass --calib DIR (or set MIXQUANT_DATA)")
    store = open_store(args.store, not args.no_store) if hasattr(args, "store") else None
    cluster = open_cluster(getattr(args, "cluster", None))
    act_bits = getattr(args, "act_bits", None)
    where = calib_dir(args) if act_bits is not None or ranges == "loss" else None
    if act_bits is not None and where is None:  # before the model load
        raise MixQuantError("--act-bits needs calibration images for the activation ranges: pass --calib DIR "
                            "(or set MIXQUANT_DATA)")
    loaded = load_model(args.model, arch=args.arch, trust_code=args.trust_code)
    mode = mode_of(args)
    calib = None if where is None else calibration_tensors(where, args.calib_images, loaded.preprocess, mode)
    ws = Workspace(loaded, args.quantizer, args.bits, args.keep_first_last, args.exclude,
                   device=getattr(args, "device", "cpu"), engine=getattr(args, "engine", "auto"), notify=notice,
                   cluster=cluster, ranges=ranges, act_bits=act_bits, act_range=getattr(args, "act_range", None),
                   calib=calib, act_keep_float=getattr(args, "act_keep_float", ()),
                   act_outputs=getattr(args, "act_outputs", True))
    if ranges == "loss":  # a stage of its own: the layers' input Gram matrices on the calibration images, then the range search
        with progress(mode, "loss-aware ranges", "layers") as cb:
            ws.calibrate(cb)
    if act_bits is not None:
        from mixquant_core.quant.act_calibration import calibration_notes

        with progress(mode, "activation ranges"):
            acts = ws.recipe.acts  # calibrated once, now: a bad calibration fails before any evaluation
        for line in calibration_notes(acts):
            notice(line)
    return Evaluations(ws, store=store, early_stop=getattr(args, "early_stop", False))


def eval_tensors(args, ws, mode: str):
    """The ``--data`` images (first ``--limit``), decoded for ``ws``'s model or streamed from their files."""
    from mixquant_core.data.image_sets import open_image_folder, open_imagenette
    from mixquant_core.data.load import load_tensors

    if args.data.startswith("imagenette"):
        root = args.data.partition(":")[2] or "imagenette-data"
        images = open_imagenette(root)
    else:
        images = open_image_folder(args.data)
    images = images.subset(args.limit)
    with progress(mode, "decode", "images") as cb:
        data = load_tensors(images, ws.loaded.preprocess, cb, getattr(args, "cache_mb", None))
    if data.skipped:
        print(f"warning: skipped {len(data.skipped)} unreadable image(s), e.g. {data.skipped[0]}", file=sys.stderr)
    if not hasattr(data, "images") and mode != OFF:
        print(f"mixquant: note: {len(data)} images do not fit the --cache-mb budget: each pass decodes them again "
              "from their files (memory stays flat)", file=sys.stderr)
    return data


def calibration_tensors(folder: str, n: int, preprocess, mode: str):
    """``n`` calibration images spread over ``folder`` (labelled or plain), decoded."""
    from mixquant_core.data.image_sets import open_calibration_folder
    from mixquant_core.data.load import load_tensors

    if n < 1:
        raise MixQuantError(f"--calib-images must be at least 1, got {n}")
    images = open_calibration_folder(folder, n)
    with progress(mode, "decode calibration", "images") as cb:
        return load_tensors(images, preprocess, cb)


def calib_dir(args) -> Optional[str]:
    """``--calib``, else $MIXQUANT_DATA/imagenet-calib-1000 when it exists."""
    from mixquant_core.data.image_sets import default_calib_dir

    return args.calib or default_calib_dir()


def fisher_calibration(args, ws, mode: str):
    """The calibration images of the Fisher cost (the Workspace's own when it has them); a one-line error when there are none."""
    if ws.calib is not None:
        return ws.calib
    where = calib_dir(args)
    if where is None:
        raise MixQuantError("the Fisher cost needs calibration images: pass --calib DIR (or set MIXQUANT_DATA)")
    return calibration_tensors(where, args.calib_images, ws.loaded.preprocess, mode)


def workspace_with_table(args, fisher: bool, mode: str) -> tuple:
    """(Evaluations whose Workspace has its QE table, calibration set or None): the Fisher table too when ``fisher``."""
    check_out(args, getattr(args, "calib", None))
    ev = open_evaluations(args)
    ws = ev.ws
    with progress(mode, "QE table", "layers") as cb:
        ws.table(cb)
    calib = None
    if fisher:
        calib = fisher_calibration(args, ws, mode)
        with progress(mode, "Fisher") as cb:
            ws.fisher(calib, cb)
    return ev, calib


def plan_notice(plan, model) -> None:
    """Check a loaded plan against the model, recompute its size, and say on stderr (one line)
    how many quantizable layers it leaves float32."""
    from mixquant_core.plans.plan import float32_notice

    left = plan.fit(model)
    if left:
        print(float32_notice(left), file=sys.stderr)
