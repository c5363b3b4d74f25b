"""The CLI starts without torch: building the parser (``--help``) and ``results list`` import none of
the core's heavy modules, and the names the parser shows stay equal to the core's. Behaviour tests,
not timings (benchmarks/bench_startup.py measures the seconds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "statsmodels", "onnxruntime", "plotly")


def heavy_modules_after(code: str, tmp_path) -> list:
    """The heavy top-level modules imported by ``code`` in a fresh interpreter (empty MIXQUANT_HOME)."""
    probe = code + f"\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    env = {**os.environ, "MIXQUANT_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_torch(tmp_path):
    assert heavy_modules_after("from mixquant_cli.main import build_parser\nbuild_parser()", tmp_path) == []


def test_results_list_imports_no_torch(tmp_path):
    code = "from mixquant_cli.main import main\nassert main(['results', 'list']) == 0"
    assert heavy_modules_after(code, tmp_path) == []


def test_the_store_and_the_errors_import_without_torch(tmp_path):
    assert heavy_modules_after("import mixquant_core.errors, mixquant_core.evaluation.store", tmp_path) == []


def test_the_public_api_still_imports_by_name():
    import mixquant_core
    from mixquant_core import Metrics, Plan, Workspace, evaluate
    from mixquant_core.evaluation.evaluate import evaluate as the_function
    from mixquant_core.plans.plan import Plan as the_plan

    assert evaluate is the_function and Plan is the_plan and Workspace.__name__ == "Workspace"
    assert Metrics.__module__ == "mixquant_core.evaluation.evaluate"
    assert all(hasattr(mixquant_core, name) for name in mixquant_core.__all__)
    assert set(mixquant_core.__all__) <= set(dir(mixquant_core))
    with pytest.raises(AttributeError):
        mixquant_core.no_such_name


def test_the_parser_names_equal_the_core_ones():
    from mixquant_cli import choices
    from mixquant_core.models.registry import DEFAULT_MODEL
    from mixquant_core.quant.quantizers import QUANTIZERS
    from mixquant_core.evaluation.latency import PRECISIONS, RUNTIMES
    from mixquant_core.recon.reconstruct import METHODS as RECON_METHODS, SCHEMES
    from mixquant_core.studies.compare import DEFAULT_TARGETS, METHODS
    from mixquant_core.studies.target import FAMILIES
    from mixquant_core.workspace import RANGES

    assert choices.QUANTIZERS == tuple(QUANTIZERS)
    assert choices.DEFAULT_MODEL == DEFAULT_MODEL
    assert choices.RECON_SCHEMES == SCHEMES
    assert choices.RECON_METHODS == RECON_METHODS
    from mixquant_core.recon.gptq import GPTQ_GRIDS, GPTQ_INPUTS
    from mixquant_core.recon.reconstruct import ReconConfig

    assert choices.GPTQ_INPUTS == GPTQ_INPUTS and choices.DEFAULT_GPTQ_INPUTS == ReconConfig.gptq_inputs
    assert choices.GPTQ_GRIDS == GPTQ_GRIDS and GPTQ_GRIDS[0] == ReconConfig.gptq_grid
    from mixquant_core.workspace import COSTS

    assert choices.ALLOCATION_COSTS == COSTS
    from mixquant_core.export.onnx import INT8_WEIGHTS

    assert choices.INT8_WEIGHTS == INT8_WEIGHTS
    assert choices.TARGET_FAMILIES == FAMILIES
    assert choices.COMPARE_METHODS == tuple(METHODS) and choices.COMPARE_TARGETS == DEFAULT_TARGETS
    assert choices.LATENCY_RUNTIMES == RUNTIMES and choices.LATENCY_PRECISIONS == PRECISIONS
    assert choices.RANGES == RANGES
    from mixquant_core.quant.act_calibration import ACT_METHODS, DEFAULT_ACT_METHOD
    from mixquant_core.quant.activations import ACT_BITS
    assert (choices.ACT_BITS, choices.ACT_METHODS, choices.DEFAULT_ACT_METHOD) == (ACT_BITS, ACT_METHODS, DEFAULT_ACT_METHOD)
