"""The app: uploads are untrusted (code refused unless the user ticks trust, named by their own
file name, advice that fits the app), and one session's evaluation never blocks another's pages."""
from __future__ import annotations

import gc

from apptest_support import assert_ran_cleanly, errors, new_app, open_page
from hostile_models import marker_script


def test_uploaded_torchscript_refused_until_trusted(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "marker"
    marker_script(path, marker)
    at = new_app(model_source="Upload a file")
    at.run()
    at.file_uploader(key="model_file").upload("my model.pt", path.read_bytes(), "application/octet-stream")
    at.run()
    assert_ran_cleanly(at)
    shown = " ".join(errors(at))
    assert "'my model.pt' is TorchScript" in shown and "Trust code in this file" in shown
    assert "--trust-code" not in shown and "--allow-pickle" not in shown and "mixquant-studio-uploads" not in shown
    assert not marker.exists()
    assert not at.sidebar.checkbox(key="trust_code").value  # off by default
    at.sidebar.checkbox(key="trust_code").check().run()
    assert_ran_cleanly(at)
    assert marker.exists() and not errors(at)
    assert any("Model: my model" in h.value for h in at.subheader)
    assert any("runs its own code" in w.value for w in at.sidebar.warning)


def test_an_evaluation_does_not_block_other_sessions_pages():
    from mixquant_core.workspace import Workspace

    first = new_app()
    open_page(first, "explore")
    assert_ran_cleanly(first)
    workspaces = [o for o in gc.get_objects() if isinstance(o, Workspace) and o.loaded.name == "efficientnet_lite0"]
    # Hold every Lite0 workspace's evaluation lock, as a long Evaluate trade-off in another
    # session does; the page must still draw (AppTest runs it on another thread, with a timeout).
    for ws in workspaces:
        ws.evaluator.lock.acquire()
    try:
        second = new_app()
        open_page(second, "explore")
        assert_ran_cleanly(second)
        assert second.session_state["qem_slider"] >= 1 and workspaces
    finally:
        for ws in workspaces:
            ws.evaluator.lock.release()


def _folder(root, labels=None):
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
    if labels is not None:
        (root / "labels.txt").write_text("".join(f"img{i}.png {lab}\n" for i, lab in enumerate(labels)))
    return root


def test_unlabelled_folder_refused_in_the_app(tmp_path):
    at = new_app(data=str(_folder(tmp_path)))
    at.run()
    assert_ran_cleanly(at)
    assert any("has images/ but no labels.txt" in e for e in errors(at))


def test_label_outside_the_classes_is_an_error_not_a_number(tmp_path):
    at = new_app(data=str(_folder(tmp_path, [3, 1000])))
    open_page(at, "tradeoff")
    at.button(key="run_sweep").click().run()
    assert_ran_cleanly(at)
    assert any("labels.txt line 2) has label 1000, outside the model's 1000 classes" in e for e in errors(at))
