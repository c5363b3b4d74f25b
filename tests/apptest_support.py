"""Shared helpers for the dashboard's AppTest tests (tests/test_app_*.py)."""
from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # studio_ui is a top-level folder beside app.py, not an installed package
    sys.path.insert(0, str(ROOT))
APP = ROOT / "app.py"
EVAL_IMAGES = 16  # keep AppTests fast: every plan is evaluated on this many images
TIMEOUT = 180  # seconds per script run (first runs load torch and the model)


def new_app(data: str | None = "", limit: int = EVAL_IMAGES, **state) -> AppTest:
    """An AppTest of app.py with the sidebar preset (before the first run, so no widget warnings)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["data_dir"] = data or ""
    at.session_state["limit"] = limit
    at.session_state["device"] = "cpu"
    for key, value in state.items():
        at.session_state[key] = value
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    """Run once (registers the navigation), then switch to ``app_pages/<page>.py``."""
    if not at.session_state.to_dict().get("settings"):
        at.run()
    return at.switch_page(f"app_pages/{page}.py").run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def assert_ran_cleanly(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def charts(at: AppTest) -> dict:
    """Plotly figures on the page by their element key (decoded: plotly ships arrays base64-packed)."""
    import plotly.io as pio

    return {el.key: pio.from_json(el.proto.spec, skip_invalid=True) for el in at.get("plotly_chart")}


def array(value) -> np.ndarray:
    """A figure array as numpy: plotly may pack it as {"dtype", "bdata"(base64), "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return flat.reshape(shape) if shape else flat
    return np.asarray(value)


def png_bytes(color=(200, 30, 30), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def labelled_folder(root: Path, files: dict) -> Path:
    """A flat eval folder: ``files`` maps FILENAME -> (bytes, label); writes images/ and labels.txt."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (content, label) in files.items():
        (root / "images" / name).write_bytes(content)
        lines.append(f"{name} {label}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root
