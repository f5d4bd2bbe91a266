"""Write the synthetic few-shot action set (coloured shapes doing simple motions) as mp4 files.

    python dataset_scripts/make_synthetic.py --out data/synthetic --num-classes 100 --videos-per-class 10 \
        --num-frames 16 --height 48 --width 64 --seed 0 [--save-to-disk data/synthetic_hf]

Writes <out>/videos/<class_folder>/<video_id>.mp4, <out>/splits/{train,val,test}list.txt (lines
"class_folder/video_id"), <out>/classes.json (folder -> prompt name) and <out>/synthetic.json, then prints a
JSON summary. With --save-to-disk it also saves the datasets.DatasetDict (contract columns).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from m2df_hf.synthetic import SyntheticConfig, build_synthetic_dataset_dict, make_synthetic_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes, help="3..140 (split 64/12/24 per 100)")
    parser.add_argument("--videos-per-class", type=int, default=defaults.videos_per_class)
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames)
    parser.add_argument("--height", type=int, default=defaults.height, help="even")
    parser.add_argument("--width", type=int, default=defaults.width, help="even")
    parser.add_argument("--fps", type=int, default=defaults.fps)
    parser.add_argument("--noise-std", type=float, default=defaults.noise_std)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save-to-disk", default=None, help="also save the DatasetDict here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    make_synthetic_dataset(
        args.out,
        SyntheticConfig(
            num_classes=args.num_classes,
            videos_per_class=args.videos_per_class,
            num_frames=args.num_frames,
            height=args.height,
            width=args.width,
            fps=args.fps,
            seed=args.seed,
            noise_std=args.noise_std,
        ),
        progress=not args.no_progress,
    )
    dsd = build_synthetic_dataset_dict(args.out)
    if args.save_to_disk:
        dsd.save_to_disk(args.save_to_disk)
    summary = {
        "out": os.path.abspath(args.out),
        "seconds": round(time.perf_counter() - start, 2),
        "splits": {
            name: {"videos": split.num_rows, "classes": len(split.features["label"].names)}
            for name, split in dsd.items()
        },
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
