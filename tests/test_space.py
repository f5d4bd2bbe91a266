"""The Gradio Space: launched on loopback, driven through gradio_client, with a real prediction coming back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hub_helpers import CROP, NUM_FRAMES, exported_dir, support_set, videos

APP = Path(__file__).resolve().parents[1] / "spaces" / "clip-m2df-demo" / "app.py"


def load_app():
    spec = importlib.util.spec_from_file_location("clip_m2df_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_space_classifies_through_gradio_client(monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client, handle_file
    from PIL import Image

    app = load_app()
    monkeypatch.setenv("M2DF_MODEL", str(exported_dir()))  # the app's way of choosing a model
    demo = app.build_demo()
    try:
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
        client = Client(url, verbose=False)
        v, support = videos(), support_set()
        slots = []
        for name, paths in support.items():
            slots += [name, [handle_file(p) for p in paths]]
        slots += ["", None] * (app.MAX_CLASSES - len(support))
        label, gallery, note = client.predict(handle_file(v["q0"]), *slots, 3, api_name="/predict")
    finally:
        demo.close()

    expected = app.load_pipeline(str(exported_dir()))(v["q0"], support_set=support, top_k=3)
    assert label["label"] == expected[0]["label"]
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert got == pytest.approx({r["label"]: r["score"] for r in expected}, abs=1e-6)
    assert "Few-shot" in note and "3 classes with 2 support video(s)" in note
    assert len(gallery) == NUM_FRAMES
    assert [item["caption"] for item in gallery] == [f"frame {t}/{NUM_FRAMES}" for t in range(1, NUM_FRAMES + 1)]
    assert Image.open(gallery[0]["image"]).size == (CROP, CROP)
