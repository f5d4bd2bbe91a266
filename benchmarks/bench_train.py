"""Training and evaluation throughput of CLIP-M2DF; prints one JSON object.

    python benchmarks/bench_train.py                       # tiny CLIP on CPU (+ ViT-B/16 at 224 when CUDA is present)
    python benchmarks/bench_train.py --sizes vitb16 --train-steps 10 --eval-episodes 200

* ``train``: episodes per second of a full training step (forward, backward, Adam) on one 5-way K-shot
  episode with 5 queries per class, from random pixels (decoding excluded; see bench_data.py), and peak
  memory (CUDA: ``max_memory_allocated``; CPU: growth of the process's peak RSS).
* ``eval``: episodes per second of the protocol on a generated synthetic test split, cached (each video
  encoded once) versus uncached (every episode re-encodes its videos), with the backbone frame encodings
  counted. Both give the same predictions (tests/test_evaluation.py).

Models are random-init (no downloads): ``tiny`` is the test CLIP (hidden 32, 32 px, patch 8); ``vitb16`` has
CLIP ViT-B/16's shapes (hidden 768, 12 layers, patch 16, 224 px; projection 512).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configuration_m2df import M2DFConfig  # noqa: E402
from modeling_m2df import M2DFModel  # noqa: E402

from m2df_hf.evaluation import compute_text_table, evaluate_episodes, split_class_names  # noqa: E402
from m2df_hf.processing_m2df import M2DFVideoProcessor  # noqa: E402
from m2df_hf.synthetic import build_synthetic_dataset_dict, make_synthetic_dataset  # noqa: E402
from m2df_hf.tokenization import build_tiny_clip_tokenizer, tiny_clip_config  # noqa: E402

SIZES = {
    "tiny": {"clip": {}, "image": 32, "video": 48},
    "vitb16": {"clip": {"hidden_size": 768, "projection_dim": 512, "image_size": 224, "patch_size": 16,
                        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
               "image": 224, "video": 256},
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(size: str, device: torch.device, num_frames: int) -> M2DFModel:
    torch.manual_seed(0)
    config = M2DFConfig.from_preset("paper", clip_config=tiny_clip_config(**SIZES[size]["clip"]), num_frames=num_frames)
    return M2DFModel(config).to(device)


def bench_train(size, device, shot, steps, num_frames, dtype) -> dict:
    model = build(size, device, num_frames).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    way, queries, image = 5, 5, SIZES[size]["image"]
    labels = torch.arange(way, device=device)
    batch = {
        "support_pixel_values": torch.randn(way * shot, num_frames, 3, image, image, device=device),
        "support_labels": labels.repeat_interleave(shot),
        "query_pixel_values": torch.randn(way * queries, num_frames, 3, image, image, device=device),
        "query_labels": labels.repeat_interleave(queries),
        "class_text_embeds": torch.randn(way, model.config.hidden_size, device=device),
    }
    rss_before = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"size": size, "device": device.type, "dtype": str(dtype).replace("torch.", ""), "way": way, "shot": shot,
           "query_per_class": queries, "num_frames": num_frames, "image_size": image,
           "frames_per_episode": way * (shot + queries) * num_frames, "steps": steps,
           "episodes_per_s": round(steps / seconds, 3)}
    if device.type == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["peak_rss_growth_mb"] = round(peak_rss_mb() - rss_before, 1)
    del model, optimizer
    return out


def bench_eval(size, device, shot, episodes, uncached_episodes, num_frames, data_dir) -> dict:
    video = SIZES[size]["video"]
    root = os.path.join(data_dir, f"synthetic_{video}")
    if not os.path.isfile(os.path.join(root, "classes.json")):
        # 25 classes -> 6 test classes, 8 videos each
        make_synthetic_dataset(root, num_classes=25, videos_per_class=8, num_frames=16, height=video, width=video,
                               seed=0, progress=False)
    split = build_synthetic_dataset_dict(root)["test"]
    model = build(size, device, num_frames).eval()
    processor = M2DFVideoProcessor.from_preset("paper", num_frames=num_frames, resize_short_side=SIZES[size]["image"],
                                               crop_size=SIZES[size]["image"])
    table = compute_text_table(model, build_tiny_clip_tokenizer(), split_class_names(split))
    out = {"size": size, "device": device.type, "way": 5, "shot": shot, "query_per_class": 1,
           "test_videos": len(split)}
    for name, cached, n in (("cached", True, episodes), ("uncached", False, uncached_episodes)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        result = evaluate_episodes(model, split, processor, text_table=table, way=5, shot=shot, num_episodes=n,
                                   seed=0, cached=cached, progress=False)
        out[name] = {"episodes": n, "episodes_per_s": round(n / result.seconds, 2),
                     "backbone_frame_encodings": result.backbone_frame_encodings,
                     "encodings_per_episode": round(result.backbone_frame_encodings / n, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help="comma list of tiny,vitb16 (default: tiny, plus vitb16 on CUDA)")
    parser.add_argument("--shots", default="1,5", help="comma list of K for the training steps")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=200, help="cached episodes")
    parser.add_argument("--uncached-episodes", type=int, default=20)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="train steps under bf16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", default=None, help="where to generate the eval videos (default: a temp dir)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.sizes.split(",") if args.sizes else (["tiny", "vitb16"] if device.type == "cuda" else ["tiny"])
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="m2df_bench_")
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "train": [], "eval": []}
    for size in sizes:
        for shot in (int(s) for s in args.shots.split(",")):
            report["train"].append(bench_train(size, device, shot, args.train_steps, args.num_frames, dtype))
        report["eval"].append(bench_eval(size, device, 1, args.eval_episodes, args.uncached_episodes,
                                         args.num_frames, data_dir))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
