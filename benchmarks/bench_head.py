"""Speed of the CLIP-M2DF head (D = 512, from precomputed frame features), for both presets.

Prints JSON: median milliseconds of forward+backward on a 5-way 5-shot training episode (5 queries per class,
T = 8) and of the forward on a 5-way 5-shot test episode (1 query per class). The CLIP towers are not run.

    python benchmarks/bench_head.py [--device cpu|cuda] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformers import CLIPConfig  # noqa: E402

from configuration_m2df import M2DFConfig  # noqa: E402
from modeling_m2df import M2DFModel  # noqa: E402

WAY, SHOT, FRAMES, DIM = 5, 5, 8, 512


def head_only_clip_config() -> CLIPConfig:
    """A minimal CLIP whose joint width is 512 (as ViT-B/16): the towers are built but unused here."""
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, projection_dim=DIM)
    return CLIPConfig(
        text_config=dict(
            small, vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1
        ),
        vision_config=dict(small, image_size=32, patch_size=16),
        projection_dim=DIM,
    )


def episode(queries_per_class: int, device: torch.device, generator: torch.Generator) -> dict:
    support_labels = torch.arange(WAY).repeat(SHOT)
    return dict(
        support_video_embeds=torch.randn(WAY * SHOT, FRAMES, DIM, generator=generator).to(device),
        support_labels=support_labels.to(device),
        query_video_embeds=torch.randn(WAY * queries_per_class, FRAMES, DIM, generator=generator).to(device),
        class_text_embeds=torch.randn(WAY, DIM, generator=generator).to(device),
        query_labels=torch.arange(WAY).repeat(queries_per_class).to(device),
    )


def timed(fn, repeats: int, device: torch.device) -> float:
    for _ in range(3):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    train_episode, test_episode = episode(5, device, generator), episode(1, device, generator)

    results = {}
    for preset in ("paper", "reference"):
        torch.manual_seed(0)
        model = M2DFModel(M2DFConfig.from_preset(preset, clip_config=head_only_clip_config(), num_frames=FRAMES))
        model.to(device)
        head_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("vision_", "text_")))

        def train_step(model=model):
            model.train()
            model.zero_grad(set_to_none=True)
            model(**train_episode).loss.backward()

        @torch.no_grad()
        def test_step(model=model):
            model.eval()
            model(**test_episode)

        results[preset] = {
            "train_forward_backward_ms": timed(train_step, args.repeats, device),
            "test_forward_ms": timed(test_step, args.repeats, device),
            "head_parameters": head_params,
        }

    print(
        json.dumps(
            {
                "benchmark": "bench_head",
                "episode": {
                    "way": WAY,
                    "shot": SHOT,
                    "frames": FRAMES,
                    "dim": DIM,
                    "train_queries_per_class": 5,
                    "test_queries_per_class": 1,
                },
                "device": str(device),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
