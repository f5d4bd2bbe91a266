"""Shared test set-up.

The environment is fixed here, at import, before any test module imports huggingface_hub: the Hub is
offline, HF_HOME is a fresh temporary folder (remote-code modules are written there), and seeds are set.
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="m2df_hf_home_")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from m2df_hf.synthetic import write_mp4  # noqa: E402
from m2df_hf.tokenization import build_tiny_clip_tokenizer, tiny_clip_config  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeds, and one torch thread: test tensors are tiny, and a second intra-op thread only adds OpenMP
    contention (about 10x slower on a busy 2-core box). Restored after each test, since runs may change it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clip_config():
    """Tiny random CLIP: hidden 32, image 32, patch 8, 2 layers; text tower matches ``tiny_tokenizer``."""
    return tiny_clip_config()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def write_video(path, frames, fps=10):
    """Write uint8 frames [T, H, W, 3] as an mpeg4 video with PyAV (H and W even), default rate control."""
    return write_mp4(path, frames, fps=fps, qscale=None)


@pytest.fixture
def video_factory(tmp_path):
    """``video_factory(name, num_frames=12, height=48, width=64, seed=0) -> path`` of a random-noise mp4."""

    def make(name="clip.mp4", num_frames=12, height=48, width=64, seed=0):
        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)
        return write_video(tmp_path / name, frames)

    return make
