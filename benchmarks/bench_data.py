"""Data-loading throughput: sparse decode + transform vs naive full decode, and episodes/s from a DataLoader.

    python benchmarks/bench_data.py [--videos 8] [--frames 60] [--width 320] [--height 240] [--workers 2]
                                    [--episodes 8] [--way 5] [--shot 1] [--query 1] [--repeats 2]

Writes synthetic 320x240 mp4s of about 60 frames to a temporary folder, then prints JSON with:

* ``per_worker`` (one process, one torch thread, decord one thread):
  - ``sparse``: ``M2DFVideoProcessor`` as used in training/evaluation (decode only the T sampled frames,
    resize 256, crop 224, normalise) -> output frames/s and videos/s;
  - ``naive``: decode every frame of the video, then take the same T frames and transform them;
  - ``speedup``: sparse / naive videos per second.
* ``dataloader``: N-way K-shot episodes/s (training augmentation) from ``DataLoader(batch_size=None,
  num_workers=W)``, after one warm-up episode per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, Features, Value, Video  # noqa: E402

from m2df_hf.episodes import EpisodeDataset  # noqa: E402
from m2df_hf.processing_m2df import (  # noqa: E402
    M2DFVideoProcessor,
    read_video_frames,
    sample_frame_indices,
    transform_clip,
)
from m2df_hf.synthetic import class_catalogue, class_prompt_name, render_video, write_mp4  # noqa: E402


def _rates(functions, items, repeats):
    """Items per second of each function, timed interleaved item by item so that load from other processes
    hits every function alike; the best of ``repeats`` passes."""
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        spent = dict.fromkeys(functions, 0.0)
        for item in items:
            for name, fn in functions.items():
                start = time.perf_counter()
                fn(item)
                spent[name] += time.perf_counter() - start
        best = {name: min(best[name], spent[name]) for name in functions}
    return {name: len(items) / seconds for name, seconds in best.items()}


def write_videos(folder, num_classes, videos_per_class, num_frames, height, width):
    """``num_classes`` synthetic classes x ``videos_per_class`` mp4s -> a split with the contract's columns."""
    rows = {"video": [], "label": [], "class_name": []}
    classes = class_catalogue()[:: len(class_catalogue()) // num_classes][:num_classes]  # spread over the catalogue
    names = [class_prompt_name(*c) for c in classes]
    for label, (colour, shape, motion) in enumerate(classes):
        for k in range(videos_per_class):
            frames = render_video(colour, shape, motion, num_frames, height, width, np.random.default_rng([label, k]))
            path = write_mp4(os.path.join(folder, f"{label}_{k}.mp4"), frames)
            rows["video"].append({"path": path, "bytes": None})
            rows["label"].append(label)
            rows["class_name"].append(names[label])
    features = Features({"video": Video(decode=False), "label": ClassLabel(names=names), "class_name": Value("string")})
    return Dataset.from_dict(rows, features=features)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2, help="videos per class (--way classes are written)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--num-frames", type=int, default=8, help="T, frames sampled per video")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--query", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="m2df_bench_") as tmp:
        start = time.perf_counter()
        train = write_videos(tmp, args.way, args.videos, args.frames, args.height, args.width)
        write_seconds = time.perf_counter() - start
        paths = [row["path"] for row in train["video"]]
        proc = M2DFVideoProcessor.from_preset("paper", num_frames=args.num_frames)

        def sparse(path):
            return proc.load_clip(path)

        def naive(path):
            frames = read_video_frames(path)  # every frame
            indices = sample_frame_indices(len(frames), proc.num_frames, proc.sampler)
            return transform_clip(frames[indices], proc.resize_short_side, proc.crop_size, False, False,
                                  proc.image_mean, proc.image_std)

        def decode_sparse(path):
            return read_video_frames(path, sample_frame_indices(args.frames, proc.num_frames, proc.sampler))

        sparse(paths[0]), naive(paths[0])  # warm-up (library initialisation)
        rates = _rates({"sparse": sparse, "naive": naive, "decode_sparse": decode_sparse,
                        "decode_all": read_video_frames}, paths, args.repeats)
        sparse_rate, naive_rate = rates["sparse"], rates["naive"]
        decode_rate, full_decode_rate = rates["decode_sparse"], rates["decode_all"]

        dataset = EpisodeDataset(train, proc, args.way, args.shot, args.query,
                                 num_episodes=args.episodes + args.workers,
                                 seed=0, training=True)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers)
        iterator = iter(loader)
        for _ in range(max(args.workers, 1)):  # warm-up: worker start-up and first episode
            next(iterator)
        start = time.perf_counter()
        count = sum(1 for _ in iterator)
        episodes_per_second = count / (time.perf_counter() - start)

    videos_per_episode = args.way * (args.shot + args.query)
    result = {
        "benchmark": "data",
        "videos": {"count": len(paths), "frames": args.frames, "width": args.width, "height": args.height,
                   "codec": "mpeg4", "write_seconds": round(write_seconds, 2)},
        "processor": {"num_frames": proc.num_frames, "sampler": proc.sampler,
                      "resize_short_side": proc.resize_short_side, "crop_size": proc.crop_size},
        "per_worker": {
            "sparse": {"videos_per_s": round(sparse_rate, 2), "frames_per_s": round(sparse_rate * proc.num_frames, 1),
                       "decode_only_frames_per_s": round(decode_rate * proc.num_frames, 1)},
            "naive": {"videos_per_s": round(naive_rate, 2), "frames_per_s": round(naive_rate * proc.num_frames, 1),
                      "decode_only_frames_per_s": round(full_decode_rate * args.frames, 1)},
            "speedup": round(sparse_rate / naive_rate, 2),
        },
        "dataloader": {"workers": args.workers, "way": args.way, "shot": args.shot, "query_per_class": args.query,
                       "videos_per_episode": videos_per_episode, "episodes": count,
                       "episodes_per_s": round(episodes_per_second, 3),
                       "videos_per_s": round(episodes_per_second * videos_per_episode, 2)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "torch_threads_per_worker": 1},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
