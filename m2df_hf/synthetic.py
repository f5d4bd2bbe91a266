"""A synthetic few-shot action set: coloured shapes doing simple motions, written as real mp4 files.

Every class is one (colour, shape, motion) combination with a plain-English name, e.g. "a red square moving
left". The catalogue has 4 colours x 4 shapes x 9 motions, less the invisible "rotating circle", = 140
classes; ``make_synthetic_dataset`` draws ``num_classes`` of them (default 100) and splits them 64/12/24 into
train/val/test classes like the CMN splits. Each video varies randomly (start position, speed, size, shade,
background colour and noise), so that telling classes apart needs the motion, not one frame.

Layout written under ``root`` (the same as the real datasets' video folders and split lists)::

    root/videos/<class_folder>/<video_id>.mp4
    root/splits/{train,val,test}list.txt      # lines "class_folder/video_id"
    root/classes.json                         # class_folder -> prompt name
    root/synthetic.json                       # the generation parameters

Everything is deterministic by ``seed``: each video's randomness comes from ``(seed, class, video)`` alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("square", "circle", "triangle", "cross")
MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "rotating",
    "growing",
    "shrinking",
    "bouncing",
    "blinking",
)
SPLIT_FRACTIONS = {"train": 0.64, "val": 0.12, "test": 0.24}


def class_catalogue() -> list[tuple[str, str, str]]:
    """All (colour, shape, motion) classes, in a fixed order; a rotating circle looks static, so it is left out."""
    return [
        (colour, shape, motion)
        for colour in COLOURS
        for shape in SHAPES
        for motion in MOTIONS
        if not (shape == "circle" and motion == "rotating")
    ]


def class_prompt_name(colour: str, shape: str, motion: str) -> str:
    return f"a {colour} {shape} {motion}"


def class_folder_name(prompt_name: str) -> str:
    """Folder name on disk: the prompt name with spaces as underscores (the builders turn them back)."""
    return prompt_name.replace(" ", "_")


@dataclass
class SyntheticConfig:
    num_classes: int = 100
    videos_per_class: int = 10
    num_frames: int = 16
    height: int = 48
    width: int = 64  # decord 0.6 needs its slow per-frame path for widths 16, 24, 48, 72
    fps: int = 10
    seed: int = 0
    noise_std: float = 12.0  # maximum std of the uniform background noise (grey levels); each video draws below it


def split_class_counts(num_classes: int) -> dict[str, int]:
    """64/12/24 per 100 classes; the remainder of the rounding goes to train."""
    val = max(1, round(num_classes * SPLIT_FRACTIONS["val"]))
    test = max(1, round(num_classes * SPLIT_FRACTIONS["test"]))
    train = num_classes - val - test
    if train < 1:
        raise ValueError(f"num_classes={num_classes} is too small for a train/val/test class split (need >= 3).")
    return {"train": train, "val": val, "test": test}


def choose_classes(num_classes: int, seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """Draw ``num_classes`` classes of the catalogue and split them into train/val/test, deterministically."""
    catalogue = class_catalogue()
    if not 3 <= num_classes <= len(catalogue):
        raise ValueError(f"num_classes must be in [3, {len(catalogue)}], got {num_classes}.")
    order = np.random.default_rng([seed, 0]).permutation(len(catalogue))[:num_classes]
    counts = split_class_counts(num_classes)
    splits, start = {}, 0
    for split in ("train", "val", "test"):
        chosen = [catalogue[i] for i in order[start : start + counts[split]]]
        splits[split] = sorted(chosen, key=lambda c: class_prompt_name(*c))
        start += counts[split]
    return splits


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` given pixel offsets (already rotated) from its centre, all ``[T, H, W]``."""
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.8
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "cross":
        arm = radius / 3.0
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    if shape == "triangle":
        # Equilateral, pointing up, circumradius `radius`: inside when every edge's outward normal n has
        # n . p <= radius / 2 (image y points down, so "up" is -y).
        inside = np.ones(dx.shape, dtype=bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            nx, ny = -np.cos(angle), np.sin(angle)  # normal opposite each vertex
            inside &= dx * nx + dy * ny <= radius / 2
        return inside
    raise ValueError(f"Unknown shape {shape!r}")


def render_video(
    colour: str, shape: str, motion: str, num_frames: int, height: int, width: int, rng: np.random.Generator,
    noise_std: float = 12.0,
) -> np.ndarray:
    """Render one clip -> uint8 ``[T, H, W, 3]``. All randomness comes from ``rng``."""
    T, H, W = num_frames, height, width
    side = min(H, W)
    t = np.arange(T, dtype=np.float64)
    u = t / max(T - 1, 1)  # 0 -> 1 over the clip

    radius = np.full(T, side * rng.uniform(0.12, 0.2))
    cx = np.full(T, rng.uniform(0.3, 0.7) * W)
    cy = np.full(T, rng.uniform(0.3, 0.7) * H)
    angle = np.full(T, rng.uniform(0, 2 * np.pi) if shape != "circle" else 0.0)
    visible = np.ones(T, dtype=bool)

    travel = rng.uniform(0.35, 0.6)  # fraction of the frame crossed during the clip
    if motion in ("moving left", "moving right"):
        start = rng.uniform(0.15, 0.3) * W
        path = start + u * travel * W
        cx = W - path if motion == "moving left" else path
    elif motion in ("moving up", "moving down"):
        start = rng.uniform(0.15, 0.3) * H
        path = start + u * travel * H
        cy = H - path if motion == "moving up" else path
    elif motion == "rotating":
        turns = rng.uniform(0.3, 0.6) * rng.choice([-1.0, 1.0])  # shapes are symmetric: < 1/3 turn repeats
        angle = angle + 2 * np.pi * turns * u
    elif motion in ("growing", "shrinking"):
        small, large = side * rng.uniform(0.06, 0.1), side * rng.uniform(0.22, 0.3)
        grow = small + (large - small) * u
        radius = grow if motion == "growing" else grow[::-1].copy()
    elif motion == "bouncing":
        hops = rng.uniform(1.5, 2.5)
        height_px = rng.uniform(0.2, 0.3) * H
        floor = rng.uniform(0.65, 0.75) * H
        cy = floor - height_px * np.abs(np.sin(np.pi * hops * u + rng.uniform(0, 0.3)))
    elif motion == "blinking":
        period = int(rng.integers(2, 5))  # frames on, then frames off
        phase = int(rng.integers(0, 2 * period))
        visible = ((t.astype(int) + phase) // period) % 2 == 0
    else:
        raise ValueError(f"Unknown motion {motion!r}")

    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    px = xs[None] - cx[:, None, None].astype(np.float32)
    py = ys[None] - cy[:, None, None].astype(np.float32)
    cos = np.cos(angle)[:, None, None].astype(np.float32)
    sin = np.sin(angle)[:, None, None].astype(np.float32)
    dx, dy = cos * px + sin * py, -sin * px + cos * py
    mask = _shape_mask(shape, dx, dy, radius[:, None, None].astype(np.float32)) & visible[:, None, None]

    # Integer arithmetic keeps 320x240x60 clips (the benchmark's) fast to render.
    frames = np.empty((T, H, W, 3), dtype=np.int16)
    frames[:] = rng.integers(20, 121, size=3)  # background colour
    amplitude = int(round(rng.uniform(0.0, noise_std) * np.sqrt(3)))  # uniform on [-a, a] has std a / sqrt(3)
    if amplitude:
        frames += rng.integers(-amplitude, amplitude + 1, size=frames.shape, dtype=np.int16)
    tint = np.rint(np.asarray(COLOURS[colour]) + rng.normal(0, 12, size=3))
    frames[mask] = np.clip(tint, 0, 255).astype(np.int16)
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 10, qscale: int | None = 2) -> str:
    """Write uint8 ``[T, H, W, 3]`` as an mpeg4 mp4 with PyAV (H and W must be even for yuv420p)."""
    import av  # only needed to write videos

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with even H and W; got shape {frames.shape}.")
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        # Constant quantiser 2 (global_quality = 2 * FF_QP2LAMBDA): the default rate control blurs small clips.
        if qscale is not None:
            stream.options = {"flags": "qscale", "global_quality": str(qscale * 118)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return os.fspath(path)


# --------------------------------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------------------------------


def video_rng(seed: int, class_index: int, video_index: int) -> np.random.Generator:
    """The randomness of one video: a function of (seed, catalogue class index, video index) only."""
    return np.random.default_rng([seed, 1, class_index, video_index])


def make_synthetic_dataset(root: str | os.PathLike, config: SyntheticConfig | None = None, progress: bool = True,
                           **overrides) -> str:
    """Write the synthetic set under ``root`` (see the module docstring); returns ``root``.

    ``overrides`` set fields of ``SyntheticConfig`` (``num_classes``, ``videos_per_class``, ``num_frames``,
    ``height``, ``width``, ``fps``, ``seed``, ``noise_std``).
    """
    config = SyntheticConfig(**{**asdict(config or SyntheticConfig()), **overrides})
    if config.height % 2 or config.width % 2:
        raise ValueError(f"height and width must be even (yuv420p); got {config.height}x{config.width}.")
    if config.videos_per_class < 1 or config.num_frames < 1:
        raise ValueError("videos_per_class and num_frames must be >= 1.")
    root = os.fspath(root)
    catalogue_index = {c: i for i, c in enumerate(class_catalogue())}
    splits = choose_classes(config.num_classes, config.seed)
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)

    jobs = [(split, c) for split in ("train", "val", "test") for c in splits[split]]
    classes, lines = {}, {split: [] for split in splits}
    for split, (colour, shape, motion) in tqdm(jobs, desc="synthetic classes", disable=not progress):
        name = class_prompt_name(colour, shape, motion)
        folder = class_folder_name(name)
        classes[folder] = name
        os.makedirs(os.path.join(root, "videos", folder), exist_ok=True)
        for k in range(config.videos_per_class):
            rng = video_rng(config.seed, catalogue_index[(colour, shape, motion)], k)
            frames = render_video(colour, shape, motion, config.num_frames, config.height, config.width, rng,
                                  config.noise_std)
            video_id = f"{folder}_{k:03d}"
            write_mp4(os.path.join(root, "videos", folder, video_id + ".mp4"), frames, fps=config.fps)
            lines[split].append(f"{folder}/{video_id}")
    for split, split_lines in lines.items():
        with open(os.path.join(root, "splits", f"{split}list.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(split_lines) + "\n")
    with open(os.path.join(root, "classes.json"), "w", encoding="utf-8") as f:
        json.dump(dict(sorted(classes.items())), f, indent=2)
    with open(os.path.join(root, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(config), f, indent=2)
    return root


def build_synthetic_dataset_dict(root: str | os.PathLike, check_videos: bool = False, num_proc: int | None = None):
    """The synthetic set under ``root`` as a ``datasets.DatasetDict`` (train/val/test) with the contract's columns.

    ``video`` (``Video(decode=False)``), ``label`` (``ClassLabel`` over the split's sorted prompt names, as
    ``m2df_hf.data.build_dataset_dict`` makes for the real benchmarks), ``class_name`` (prompt name, from
    ``classes.json``), ``video_id``, ``num_frames``.

    The generator wrote every file itself, so by default nothing is decoded here and ``num_frames`` is the
    generated length (``synthetic.json``): fast enough for the demo. ``check_videos=True`` builds through
    ``build_dataset_dict`` instead, which opens every video and reports missing or undecodable ones
    (``num_proc`` processes); both give the same dataset for an intact folder.
    """
    from .data import build_dataset_dict, parse_split_file, split_dataset

    root = os.fspath(root)
    with open(os.path.join(root, "classes.json"), encoding="utf-8") as f:
        classes = json.load(f)
    split_files = {split: os.path.join(root, "splits", f"{split}list.txt") for split in ("train", "val", "test")}
    video_root = os.path.join(root, "videos")
    if check_videos:
        return build_dataset_dict(video_root, split_files, layout="class_folders", class_names=classes,
                                  num_proc=num_proc, verbose=False)

    from datasets import DatasetDict

    with open(os.path.join(root, "synthetic.json"), encoding="utf-8") as f:
        num_frames = json.load(f)["num_frames"]
    splits = {}
    for split, path in split_files.items():
        entries = parse_split_file(path)
        splits[split] = split_dataset(
            [os.path.join(video_root, folder, f"{video_id}.mp4") for folder, video_id in entries],
            [classes[folder] for folder, _ in entries], [video_id for _, video_id in entries],
            [num_frames] * len(entries),
        )
    return DatasetDict(splits)


__all__ = [
    "SyntheticConfig",
    "build_synthetic_dataset_dict",
    "choose_classes",
    "class_catalogue",
    "make_synthetic_dataset",
    "render_video",
]
