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


def make_examples(folder: Path) -> None:
    """examples/support/<class>/<videos> and examples/query/<videos>, as links to the test videos."""
    for name, paths in support_set().items():
        (folder / "support" / name).mkdir(parents=True)
        for p in paths:
            (folder / "support" / name / Path(p).name).symlink_to(p)
    (folder / "query").mkdir()
    for key in ("q0", "q1"):
        (folder / "query" / f"{key}.mp4").symlink_to(videos()[key])


@pytest.mark.timeout(180)
def test_space_classifies_through_gradio_client(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client, handle_file
    from PIL import Image

    app = load_app()
    monkeypatch.setenv("M2DF_MODEL", str(exported_dir()))  # the app's way of choosing a model
    make_examples(tmp_path / "examples")
    monkeypatch.setenv("M2DF_EXAMPLES", str(tmp_path / "examples"))
    rows = app.example_rows()
    expected_slots = []
    for name, paths in sorted(support_set().items()):
        expected_slots += [name, sorted(str(tmp_path / "examples" / "support" / name / Path(p).name) for p in paths)]
    expected_slots += ["", None] * (app.MAX_CLASSES - 3)
    queries = [str(tmp_path / "examples" / "query" / f"{q}.mp4") for q in ("q0", "q1")]
    assert rows == [[q, *expected_slots, app.MAX_CLASSES] for q in queries]
    demo = app.build_demo()
    datasets = [c for c in demo.config["components"] if c.get("type") == "dataset"]
    assert [len(d["props"]["samples"]) for d in datasets] == [2]  # the examples table offers both queries
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


def test_default_model_and_the_message_when_it_cannot_be_loaded(monkeypatch, tmp_path):
    app = load_app()
    monkeypatch.delenv("M2DF_MODEL", raising=False)
    monkeypatch.setattr(app, "LOCAL_DEMO_MODEL", tmp_path / "outputs" / "demo" / "model")  # not written
    assert app.default_model() == app.DEMO_MODEL_ID
    with pytest.raises(RuntimeError) as info:  # offline in tests; on a Space the published id may not exist yet
        app.load_pipeline()
    message = str(info.value)
    assert f"could not load the model {app.DEMO_MODEL_ID!r}" in message
    assert "Set the M2DF_MODEL environment variable" in message and "model folder or Hub id" in message

    monkeypatch.setattr(app, "LOCAL_DEMO_MODEL", exported_dir())  # `make demo` has run: its folder is the default
    assert app.default_model() == str(exported_dir())
    assert type(app.load_pipeline()).__name__ == "M2DFFewShotVideoClassificationPipeline"
    monkeypatch.setenv("M2DF_MODEL", str(tmp_path / "missing"))  # the variable wins, and a bad value is named
    assert app.default_model() == str(tmp_path / "missing")
    with pytest.raises(RuntimeError, match="could not load the model .*missing.*Set the M2DF_MODEL"):
        app.load_pipeline()
