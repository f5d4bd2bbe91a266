"""CLIP-M2DF few-shot action recognition demo (a Gradio Space).

Give a few example videos for each class (the support set) and a query video: the app ranks the classes with
the CLIP-M2DF few-shot pipeline and shows the frames the model saw. With class names but no support videos it
falls back to zero-shot CLIP text-video similarity and says so.

The model is a saved clip-m2df folder (from training or ``m2df export``) or Hub id: the ``M2DF_MODEL`` environment
variable, else ``outputs/demo/model`` of this repository when ``make demo`` has written it, else the published demo
model id. When that default cannot be loaded, the app stops with a message saying to set ``M2DF_MODEL``. The
pipeline code comes from the model folder or repository (``trust_remote_code=True``).

Example videos to pick from (optional) live in ``examples/`` beside this file (or ``M2DF_EXAMPLES``):
``examples/support/<class name>/<videos>`` and ``examples/query/<videos>``; each query becomes one example row
with the whole support set.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import numpy as np
from transformers import pipeline

DEMO_MODEL_ID = "clip-m2df/clip-m2df-synthetic-demo"
LOCAL_DEMO_MODEL = Path(__file__).resolve().parents[2] / "outputs" / "demo" / "model"  # written by `make demo`
MAX_CLASSES = 5
EXAMPLES_DIR = Path(__file__).parent / "examples"


def default_model() -> str:
    """``M2DF_MODEL``, else the local demo run's model folder when it exists, else the published demo id."""
    if os.environ.get("M2DF_MODEL"):
        return os.environ["M2DF_MODEL"]
    return str(LOCAL_DEMO_MODEL) if (LOCAL_DEMO_MODEL / "config.json").is_file() else DEMO_MODEL_ID


def load_pipeline(model_id: str | None = None):
    model_id = model_id or default_model()
    try:
        return pipeline("video-classification", model=model_id, trust_remote_code=True)  # GPU when the Space has one
    except Exception as err:  # a missing repo or folder surfaces as OSError, ValueError or an HTTP error
        raise RuntimeError(
            f"could not load the model {model_id!r} ({type(err).__name__}: {err}). Set the M2DF_MODEL environment "
            "variable (a Space variable) to a saved clip-m2df model folder or Hub id, e.g. "
            "M2DF_MODEL=outputs/demo/model after `make demo`, or the id you pushed with `m2df push`."
        ) from err


def sampled_frames(pipe, video_path: str) -> list[tuple[np.ndarray, str]]:
    """The frames the model sees for ``video_path`` (sampled, resized, cropped), as uint8 images with captions."""
    processor = pipe.feature_extractor
    pixel_values = np.asarray(processor(video_path)["pixel_values"][0], dtype=np.float32)  # [T, 3, H, W]
    if getattr(processor, "do_normalize", True):
        mean = np.asarray(processor.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None]
        pixel_values = pixel_values * std + mean
    frames = (pixel_values.clip(0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # [T, H, W, 3]
    return [(frame, f"frame {t + 1}/{len(frames)}") for t, frame in enumerate(frames)]


def example_rows(folder: str | os.PathLike | None = None) -> list[list]:
    """Rows ``[query, class 1, videos 1, ..., class 5, videos 5, top_k]`` from an examples folder (see above)."""
    folder = Path(folder or os.environ.get("M2DF_EXAMPLES", EXAMPLES_DIR))
    support_root, query_root = folder / "support", folder / "query"
    if not support_root.is_dir() or not query_root.is_dir():
        return []
    classes = sorted(p for p in support_root.iterdir() if p.is_dir())[:MAX_CLASSES]
    slots = []
    for class_dir in classes:
        slots += [class_dir.name, sorted(str(v) for v in class_dir.iterdir() if v.is_file())]
    slots += ["", None] * (MAX_CLASSES - len(classes))
    return [[str(q), *slots, MAX_CLASSES] for q in sorted(query_root.iterdir()) if q.is_file()]


def make_predict(pipe):
    def predict(query, *args):
        """args: MAX_CLASSES (class name, support files) pairs, then top_k."""
        *pairs, top_k = args
        if not query:
            raise gr.Error("Upload a query video.")
        names = [(name or "").strip() for name in pairs[0::2]]
        files = [list(f or []) for f in pairs[1::2]]
        support = {name: videos for name, videos in zip(names, files, strict=True) if name and videos}
        unnamed = [i + 1 for i, (name, videos) in enumerate(zip(names, files, strict=True)) if videos and not name]
        if unnamed:
            raise gr.Error(f"Give a class name for the support videos of class slot(s) {unnamed}.")
        try:
            if support:
                ranking = pipe(query, support_set=support, top_k=int(top_k))
            else:
                labels = [name for name in names if name]
                if not labels:
                    raise gr.Error("Give at least one class name, with support videos for few-shot mode.")
                ranking = pipe(query, candidate_labels=labels, top_k=int(top_k))
        except ValueError as err:
            raise gr.Error(str(err)) from err
        mode = ranking[0]["mode"]
        note = (
            f"**Few-shot** (CLIP-M2DF) over {len(support)} classes with "
            f"{len(next(iter(support.values())))} support video(s) each."
            if mode == "few-shot"
            else "**Zero-shot**: no support videos, so classes are ranked by plain CLIP text-video similarity. "
            "This is not the CLIP-M2DF method and is much less reliable."
        )
        return {r["label"]: r["score"] for r in ranking}, sampled_frames(pipe, query), note

    return predict


def build_demo(model_id: str | None = None) -> gr.Blocks:
    pipe = load_pipeline(model_id)
    with gr.Blocks(title="CLIP-M2DF few-shot action recognition") as demo:
        gr.Markdown(
            "# CLIP-M2DF few-shot action recognition\n"
            "Name up to five classes and upload a few example videos for each (the same number per class), "
            "then upload a query video (or pick an example below, when the Space has some). Class names without "
            "videos give a zero-shot ranking instead."
        )
        class_inputs = []
        with gr.Row():
            with gr.Column():
                for i in range(MAX_CLASSES):
                    with gr.Row():
                        name = gr.Textbox(label=f"class {i + 1}", scale=1)
                        videos = gr.File(
                            label=f"support videos for class {i + 1}", file_count="multiple",
                            file_types=["video"], scale=2,
                        )
                    class_inputs += [name, videos]
            with gr.Column():
                query = gr.File(label="query video", file_types=["video"])
                top_k = gr.Slider(1, MAX_CLASSES, value=MAX_CLASSES, step=1, label="top k")
                button = gr.Button("Classify", variant="primary")
                label = gr.Label(label="ranking")
                note = gr.Markdown()
                frames = gr.Gallery(label="frames the model sees", columns=8, height="auto")
        examples = example_rows()
        if examples:
            gr.Examples(examples, inputs=[query, *class_inputs, top_k], label="pick an example support set and query")
        button.click(
            make_predict(pipe), inputs=[query, *class_inputs, top_k], outputs=[label, frames, note], api_name="predict"
        )
    return demo


if __name__ == "__main__":
    try:
        demo = build_demo()
    except RuntimeError as err:
        raise SystemExit(f"clip-m2df demo: error: {err}") from None
    demo.launch()
