"""Quantized-model export: packed codes round trip bit-exact, size matches the accounting,
bad files are refused with one clear line."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mixquant_cli.main import main
from mixquant_core.export.packed import (ExportError, accounted_bytes, export_bytes, load_quantized_, pack_codes,
                                  read_quantized, rtn_layers, save_quantized, unpack_codes)
from mixquant_core.models.registry import build_model
from mixquant_core.plans.plan import quantize_model_
from mixquant_core.recon.reconstruct import ReconConfig, reconstruct_plan
from recon_support import MIXED_BITS, images, tiny_chain, workspace


@given(st.integers(2, 8), st.integers(0, 300), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(nbits, n, seed):
    rng = np.random.default_rng(seed)
    codes = torch.from_numpy(rng.integers(0, 2**nbits, size=n, dtype=np.uint8))
    packed = pack_codes(codes, nbits)
    assert len(packed) == -(-n * nbits // 8)
    assert np.array_equal(unpack_codes(packed, n, nbits), codes.numpy())


def _states_equal(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("quantizer", ["asymmetric", "per-channel", "symmetric", "per-channel-symmetric",
                                       "asymmetric-mse", "per-channel-mse", "symmetric-mse"])
def test_round_to_nearest_export_is_bit_exact(tmp_path, quantizer):
    model = tiny_chain()
    plan = workspace(model, quantizer).plan_from_bits(MIXED_BITS)
    path = tmp_path / "q.safetensors"
    save_quantized(path, model, plan, rtn_layers(model, plan))
    expected = quantize_model_(copy.deepcopy(model), plan)
    loaded = tiny_chain(seed=5)  # other weights: everything must come from the file
    qf = load_quantized_(loaded, path)
    _states_equal(loaded, expected)
    assert qf.plan.bits == plan.bits and qf.scheme == quantizer


def test_reconstructed_export_is_bit_exact(tmp_path):
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    result = reconstruct_plan(model, plan, images(8), ReconConfig(iters=5, batch_size=4, eval_samples=8))
    data = export_bytes(model, plan, result.layers)
    loaded = tiny_chain(seed=3)
    load_quantized_(loaded, data)
    modules = dict(loaded.named_modules())
    for name, q in result.layers.items():
        assert torch.equal(modules[name].weight, q.weight())


@pytest.mark.parametrize("name,quantizer", [("efficientnet_lite0", "asymmetric"), ("efficientnet_lite0", "per-channel"),
                                            ("efficientnet_lite0", "per-channel-mse"), ("resnet18", "asymmetric")])
@pytest.mark.parametrize("bits", [2, 8])
def test_file_size_within_one_percent_of_accounting(tmp_path, name, quantizer, bits):
    from mixquant_core.models.registry import build_model

    loaded = build_model(name, pretrained=False)  # random weights: the size does not depend on them
    ws = workspace(loaded.model, quantizer)
    plan = ws.plan_from_bits(ws.uniform(bits))
    path = tmp_path / "m.safetensors"
    size = save_quantized(path, loaded.model, plan, rtn_layers(loaded.model, plan))
    accounted = accounted_bytes(loaded.model, plan, quantizer)
    assert accounted == round(plan.size["plan_mb"] * 1e6)
    assert 0 <= size - accounted < 0.01 * accounted, (size, accounted)


@pytest.fixture
def exported(tmp_path):
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    path = tmp_path / "q.safetensors"
    save_quantized(path, model, plan, rtn_layers(model, plan))
    return model, plan, path


def test_corrupt_file_refused(exported, tmp_path):
    model, _, path = exported
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern inside the tensor data
    with pytest.raises(ExportError, match="corrupt"):
        read_quantized(bytes(data), model)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        read_quantized(truncated, model)
    with pytest.raises(ExportError, match="not a readable safetensors"):
        read_quantized(b"not a model at all", model)


def test_file_for_another_model_refused(exported):
    _, _, path = exported
    with pytest.raises(ExportError, match="another model"):
        read_quantized(path, tiny_chain(width=4))


def test_not_an_export_file_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ExportError, match="not a MixQuant quantized-model file"):
        read_quantized(path, tiny_chain())


def test_cli_prints_one_line_for_a_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["load", str(bad), "--model", "efficientnet_lite0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable safetensors file" in err[0]


def test_cli_reconstruct_export_load_round_trip(data_root, tmp_path, capsys):
    """`mixquant reconstruct` -> `export --reconstructed` -> `load`: the options reach the core, the
    learned codes survive the re-export unchanged, and the file checks out against the model."""
    import json

    recon, again = tmp_path / "recon.safetensors", tmp_path / "again.safetensors"
    argv = ["reconstruct", "--uniform", "4", "--quantizer", "per-channel", "--calib", str(data_root / "imagenet-calib-1000"),
            "--calib-images", "4", "--iters", "2", "--batch-size", "2", "--lr", "0.05", "--device", "cpu",
            "--out", str(recon), "--no-progress", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calib_images"] == 4 and report["iters"] == 2 and abs(report["difference_pct"]) < 1.0
    model = build_model("efficientnet_lite0").model
    first = read_quantized(recon, model)
    meta = json.loads(first.metadata["reconstruction"])
    assert meta["config"]["lr"] == 0.05 and meta["config"]["batch_size"] == 2 and meta["calib_images"] == 4
    assert main(["export", "--uniform", "4", "--quantizer", "per-channel", "--reconstructed", str(recon),
                 "--out", str(again), "--no-progress"]) == 0
    capsys.readouterr()
    second = read_quantized(again, model)
    assert first.layers.keys() == second.layers.keys()
    assert all(torch.equal(first.layers[n].codes, second.layers[n].codes) for n in first.layers)
    assert main(["load", str(again), "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["model"] == "efficientnet_lite0"
