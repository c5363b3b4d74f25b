"""recon_figures.block_error_figure on a real reconstruction's block reports."""
import numpy as np
import pytest
import torch

from mixquant_viz import recon as recon_figures
from mixquant_core.recon.reconstruct import ReconConfig, reconstruct_plan
from recon_support import MIXED_BITS, images, tiny_chain, workspace


@pytest.fixture(scope="module")
def blocks():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_chain()
        plan = workspace(model).plan_from_bits(MIXED_BITS)
        return reconstruct_plan(model, plan, images(8), ReconConfig(iters=10, batch_size=4, eval_samples=8)).blocks
    finally:
        torch.set_num_threads(before)


def test_bars_are_each_blocks_error_before_and_after_in_model_order(blocks):
    fig = recon_figures.block_error_figure(blocks)
    nearest, learned = fig.data
    assert (nearest.name, learned.name) == ("round-to-nearest", "learned rounding")
    assert list(nearest.x) == list(learned.x) == [b.name for b in blocks] == ["0", "1", "2", "3"]
    np.testing.assert_allclose(np.asarray(nearest.y, dtype=float), [b.mse_nearest for b in blocks])
    np.testing.assert_allclose(np.asarray(learned.y, dtype=float), [b.mse_learned for b in blocks])
    assert [c[0] for c in nearest.customdata] == [len(b.layers) for b in blocks] == [1, 2, 1, 1]
    assert fig.layout.yaxis.type == "log" and fig.layout.barmode == "group"


def test_dicts_draw_the_same_figure(blocks):
    as_dicts = [dict(b.__dict__) for b in blocks]
    assert recon_figures.block_error_figure(as_dicts).to_dict() == recon_figures.block_error_figure(blocks).to_dict()


def test_module_does_not_import_streamlit():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(recon_figures))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "streamlit" not in imported
