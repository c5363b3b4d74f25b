"""Export files are untrusted: one checksum over metadata and tensors, bounded index inflation,
only registry model names, every field checked before loading."""
from __future__ import annotations

import base64
import json
import zlib

import pytest
from safetensors import safe_open
from safetensors.torch import save

from mixquant_cli.main import main
from mixquant_core.export import packed
from mixquant_core.export.packed import ExportError, export_bytes, read_quantized, rtn_layers, size_report
from recon_support import MIXED_BITS, tiny_chain, workspace


def _export(tmp_path, quantizer="asymmetric"):
    model = tiny_chain()
    plan = workspace(model, quantizer).plan_from_bits(MIXED_BITS)
    path = tmp_path / "q.safetensors"
    path.write_bytes(export_bytes(model, plan, rtn_layers(model, plan)))
    return model, path


def _rewrite(path, edit, rechecksum: bool):
    """The file with its metadata edited, the checksum left stale or recomputed (as an attacker would)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(meta)
    if rechecksum:
        meta["sha256"] = packed._digest(tensors, meta)
    path.write_bytes(save(tensors, metadata=meta))


def test_edited_scheme_refused(tmp_path):
    model, path = _export(tmp_path)
    _rewrite(path, lambda m: m.update(scheme="per-channel"), rechecksum=False)
    with pytest.raises(ExportError, match="corrupt or edited"):
        read_quantized(str(path), model)
    with pytest.raises(ExportError, match="corrupt or edited"):
        size_report(str(path), model)


def test_edited_plan_size_refused_even_with_a_fresh_checksum(tmp_path):
    model, path = _export(tmp_path)

    def shrink(meta):
        plan = json.loads(meta["plan"])
        plan["size"]["plan_mb"] = 0.001
        meta["plan"] = json.dumps(plan)

    _rewrite(path, shrink, rechecksum=False)
    with pytest.raises(ExportError, match="corrupt or edited"):
        read_quantized(str(path), model)
    _rewrite(path, shrink, rechecksum=True)
    with pytest.raises(ExportError, match="plan says plan_mb 0.001"):
        read_quantized(str(path), model)


def test_zlib_bomb_index_refused_without_inflating(tmp_path):
    model, path = _export(tmp_path)
    bomb = base64.b64encode(zlib.compress(b"[" + b" " * 200_000_000 + b"]", 9)).decode()  # 200 MB from ~200 kB
    _rewrite(path, lambda m: m.update(index=bomb), rechecksum=True)
    with pytest.raises(ExportError, match="inflates past"):
        read_quantized(str(path), model)


def test_unknown_scheme_refused(tmp_path):
    model, path = _export(tmp_path)
    _rewrite(path, lambda m: m.update(scheme="rot13"), rechecksum=True)
    with pytest.raises(ExportError, match="unknown quantization scheme"):
        read_quantized(str(path), model)


def test_load_refuses_a_model_path_named_in_the_file(tmp_path, capsys):
    _, path = _export(tmp_path)
    marker_model = tmp_path / "evil.pt"
    marker_model.write_bytes(b"never read")

    def point_at_file(meta):
        plan = json.loads(meta["plan"])
        plan["model"].update(name=str(marker_model), source="file")
        meta["plan"] = json.dumps(plan)

    _rewrite(path, point_at_file, rechecksum=True)
    assert main(["load", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "name the model yourself (--model" in err and err.count("\n") == 1


def test_version_1_files_refused_with_advice(tmp_path):
    model, path = _export(tmp_path)
    _rewrite(path, lambda m: m.update(version="1"), rechecksum=True)
    with pytest.raises(ExportError, match="export it again"):
        read_quantized(str(path), model)


def test_export_out_equal_to_plan_refused_and_plan_kept(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    assert main(["search", "--qem", "50", "--out", str(plan_path), "--no-progress", "--bits", "8,4"]) == 0
    before = plan_path.read_bytes()
    capsys.readouterr()
    assert main(["export", "--plan", str(plan_path), "--out", str(plan_path)]) == 2
    assert "is also an input" in capsys.readouterr().err
    assert plan_path.read_bytes() == before


def test_plan_with_empty_size_exports_with_recomputed_size(tmp_path, capsys):
    plan_path, out = tmp_path / "plan.json", tmp_path / "q.safetensors"
    assert main(["search", "--qem", "50", "--out", str(plan_path), "--no-progress", "--bits", "8,4"]) == 0
    plan = json.loads(plan_path.read_text())
    plan["size"] = {}
    plan_path.write_text(json.dumps(plan))
    capsys.readouterr()
    assert main(["export", "--plan", str(plan_path), "--out", str(out)]) == 0
    assert "average bits" in capsys.readouterr().out and out.stat().st_size > 0


def test_plan_past_the_metadata_limit_refused_before_work(monkeypatch):
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    monkeypatch.setattr(packed, "METADATA_LIMIT", 200)  # a real one is 100 MB: scaled down, same rule
    with pytest.raises(ExportError, match="metadata holds at most"):
        packed.check_metadata_fits(plan)
    with pytest.raises(ExportError, match="metadata holds at most"):
        export_bytes(model, plan, rtn_layers(model, plan))
