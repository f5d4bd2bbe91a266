"""Shared builders for the Hub-area tests: a tiny saved model folder, its export, and small test videos.

Each is built once per test process (``functools.cache``) because loading and saving remote code is the slow
part of these tests.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
from conftest import write_video

NUM_FRAMES = 4
CROP = 32
RESULTS = {
    "task": {"dataset": "synthetic", "way": 3, "shot": 2, "query_per_class": 1},
    "model": {"preset": "paper", "base_model": None, "num_frames": NUM_FRAMES},
    "test": {"accuracy": 71.25, "ci95": 1.83, "num_episodes": 400, "split": "test", "seed": 0},
    "val_best": {"accuracy": 68.5, "ci95": 2.1, "num_episodes": 200, "step": 60},
    "before_training": {"accuracy": 34.0, "ci95": 2.0, "num_episodes": 400},
    "backbone_frame_encodings": 960,
    "synthetic": True,
    "config": {"seed": 0, "way": 3, "shot": 2, "lr": 0.001},
}


def _tmp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


@functools.cache
def tiny_model_dir() -> Path:
    """A saved model folder as training writes it (``save_hub_folder``), plus results.json (no card yet)."""
    import torch

    from configuration_m2df import M2DFConfig
    from m2df_hf.hub import save_hub_folder
    from m2df_hf.processing_m2df import M2DFVideoProcessor
    from m2df_hf.tokenization import build_tiny_clip_tokenizer, tiny_clip_config
    from modeling_m2df import M2DFModel

    torch.manual_seed(0)
    path = _tmp("m2df_model_")
    M2DFConfig.register_for_auto_class()
    M2DFModel.register_for_auto_class("AutoModel")
    model = M2DFModel(M2DFConfig.from_preset("paper", clip_config=tiny_clip_config(), num_frames=NUM_FRAMES)).eval()
    processor = M2DFVideoProcessor(num_frames=NUM_FRAMES, resize_short_side=CROP + 4, crop_size=CROP)
    save_hub_folder(model, processor, build_tiny_clip_tokenizer(path), path)  # what train_accelerate.py calls
    (path / "results.json").write_text(json.dumps(RESULTS))
    return path


@functools.cache
def exported_dir() -> Path:
    from m2df_hf.hub import export_model

    return export_model(tiny_model_dir(), _tmp("m2df_export_") / "hub", repo_id="org/clip-m2df")


@functools.cache
def videos() -> dict[str, str]:
    """Small noise videos with distinct content: three classes x two shots, plus three queries."""
    folder = _tmp("m2df_videos_")
    out = {}
    for i, name in enumerate(["a0", "a1", "b0", "b1", "c0", "c1", "q0", "q1", "q2"]):
        rng = np.random.default_rng(100 + i)
        frames = rng.integers(0, 256, size=(6, 36, 44, 3), dtype=np.uint8)
        out[name] = write_video(folder / f"{name}.mp4", frames)
    return out


def support_set() -> dict[str, list[str]]:
    v = videos()
    return {"jumping": [v["a0"], v["a1"]], "running": [v["b0"], v["b1"]], "waving": [v["c0"], v["c1"]]}
