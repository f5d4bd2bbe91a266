"""The synthetic action set: class catalogue, motion semantics, determinism, files and DatasetDict."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from m2df_hf.processing_m2df import count_frames, read_video_frames
from m2df_hf.synthetic import (
    COLOURS,
    MOTIONS,
    SHAPES,
    build_synthetic_dataset_dict,
    choose_classes,
    class_catalogue,
    make_synthetic_dataset,
    render_video,
)

SMALL = dict(num_classes=9, videos_per_class=2, num_frames=6, height=32, width=40)


def _digest(root):
    """Hash of every file under root (relative path + bytes)."""
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_catalogue_has_over_100_plain_english_classes():
    catalogue = class_catalogue()
    assert len(catalogue) == len(COLOURS) * len(SHAPES) * len(MOTIONS) - len(COLOURS) == 140
    assert len(set(catalogue)) == len(catalogue)
    splits = choose_classes(100, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 64, "val": 12, "test": 24}
    names = [f"a {c} {s} {m}" for split in splits.values() for c, s, m in split]
    assert len(set(names)) == 100
    pattern = re.compile(r"^a (red|green|blue|yellow) (square|circle|triangle|cross) (moving (left|right|up|down)|"
                         r"rotating|growing|shrinking|bouncing|blinking)$")
    assert all(pattern.match(n) for n in names)
    assert ("red", "circle", "rotating") not in catalogue  # invisible motion left out
    assert choose_classes(100, 0) == choose_classes(100, 0) != choose_classes(100, 1)
    with pytest.raises(ValueError, match="num_classes must be in"):
        choose_classes(141, 0)


def _mask(frames, colour):
    return (np.abs(frames.astype(int) - np.asarray(COLOURS[colour])) < 40).all(-1)  # [T, H, W]


@pytest.mark.parametrize(
    "motion, check",
    [
        ("moving right", lambda m: np.diff([np.nonzero(f)[1].mean() for f in m]).min() > 0),
        ("moving left", lambda m: np.diff([np.nonzero(f)[1].mean() for f in m]).max() < 0),
        ("moving down", lambda m: np.diff([np.nonzero(f)[0].mean() for f in m]).min() > 0),
        ("moving up", lambda m: np.diff([np.nonzero(f)[0].mean() for f in m]).max() < 0),
        ("growing", lambda m: m[-1].sum() > 3 * m[0].sum()),
        ("shrinking", lambda m: m[0].sum() > 3 * m[-1].sum()),
        ("blinking", lambda m: (m.sum((1, 2)) == 0).any() and (m.sum((1, 2)) > 10).any()),
        ("rotating", lambda m: max((m[0] != f).sum() for f in m) > 10 and np.ptp(m.sum((1, 2))) < 0.25 * m[0].sum()),
        ("bouncing", lambda m: (lambda d: d.min() < 0 < d.max())(np.diff([np.nonzero(f)[0].mean() for f in m]))),
    ],
)
def test_rendered_motion_matches_the_class_name(motion, check):
    for k in range(3):
        frames = render_video("red", "square", motion, 10, 64, 64, np.random.default_rng(k), noise_std=0.0)
        assert frames.shape == (10, 64, 64, 3) and frames.dtype == np.uint8
        assert check(_mask(frames, "red")), (motion, k)


def test_videos_vary_within_a_class():
    a, b = (render_video("blue", "cross", "bouncing", 8, 32, 32, np.random.default_rng(s)) for s in (0, 1))
    assert not np.array_equal(a, b)


def test_generation_is_deterministic_and_written_as_contract_layout(tmp_path):
    root = make_synthetic_dataset(tmp_path / "a", seed=3, progress=False, **SMALL)
    make_synthetic_dataset(tmp_path / "b", seed=3, progress=False, **SMALL)
    make_synthetic_dataset(tmp_path / "c", seed=4, progress=False, **SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")

    classes = json.loads((Path(root) / "classes.json").read_text())
    assert len(classes) == 9 and all(folder == name.replace(" ", "_") for folder, name in classes.items())
    lines = {s: (Path(root) / "splits" / f"{s}list.txt").read_text().split() for s in ("train", "val", "test")}
    split_classes = {s: {line.split("/")[0] for line in v} for s, v in lines.items()}
    # val round(9 * .12) = 1, test round(9 * .24) = 2, the rest train
    assert [len(split_classes[s]) for s in ("train", "val", "test")] == [6, 1, 2]
    assert not (split_classes["train"] & split_classes["test"]) and not (split_classes["val"] & split_classes["test"])
    for line in lines["test"]:
        folder, video_id = line.split("/")
        path = Path(root) / "videos" / folder / f"{video_id}.mp4"
        assert count_frames(str(path)) == 6
        assert read_video_frames(str(path), [0]).shape == (1, 32, 40, 3)

    # each video depends on (seed, class, index) only: more videos per class keep the first ones
    make_synthetic_dataset(tmp_path / "d", seed=3, progress=False, **{**SMALL, "videos_per_class": 3})
    first = lines["train"][0].split("/")
    same = [(tmp_path / r / "videos" / first[0] / f"{first[1]}.mp4").read_bytes() for r in ("a", "d")]
    assert same[0] == same[1]


def test_build_synthetic_dataset_dict_has_the_contract_columns(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", seed=0, progress=False, **SMALL)
    dsd = build_synthetic_dataset_dict(root)
    assert set(dsd) == {"train", "val", "test"}
    for split in dsd.values():
        assert split.column_names == ["video", "label", "class_name", "video_id", "num_frames"]
        assert type(split.features["video"]).__name__ == "Video" and split.features["video"].decode is False
        names = split.features["label"].names
        assert names == sorted(names) and all(re.match(r"^a \w+ \w+ \w+( \w+)?$", n) for n in names)
        for row in split:
            assert row["class_name"] == names[row["label"]]
            folder = row["class_name"].replace(" ", "_")
            assert row["video"]["path"].endswith(f"/{folder}/{row['video_id']}.mp4") and row["video"]["bytes"] is None
            assert row["num_frames"] == count_frames(row["video"]) == 6
    assert dsd["train"].num_rows == 6 * 2
    # the fast path (no decoding) equals the checked build through m2df_hf.data.build_dataset_dict
    checked = build_synthetic_dataset_dict(root, check_videos=True)
    for name in dsd:
        assert checked[name].features == dsd[name].features
        assert checked[name].to_list() == dsd[name].to_list()


def test_invalid_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_synthetic_dataset(tmp_path, progress=False, **{**SMALL, "width": 41})


def test_make_synthetic_cli_writes_the_set_and_reports_counts(tmp_path, capsys):
    import runpy

    script = Path(__file__).resolve().parents[1] / "dataset_scripts" / "make_synthetic.py"
    main = runpy.run_path(str(script))["main"]
    summary = main(["--out", str(tmp_path / "cli"), "--num-classes", "5", "--videos-per-class", "2",
                    "--num-frames", "4", "--height", "32", "--width", "40", "--seed", "1", "--no-progress",
                    "--save-to-disk", str(tmp_path / "hf")])
    # 5 classes: val round(0.6) = 1, test round(1.2) = 1, train 3
    assert summary["splits"] == {"train": {"videos": 6, "classes": 3}, "val": {"videos": 2, "classes": 1},
                                 "test": {"videos": 2, "classes": 1}}
    assert json.loads(capsys.readouterr().out)["splits"] == summary["splits"]
    assert json.loads((tmp_path / "cli" / "synthetic.json").read_text())["seed"] == 1
    from datasets import load_from_disk

    reloaded = load_from_disk(str(tmp_path / "hf"))
    rebuilt = build_synthetic_dataset_dict(tmp_path / "cli")
    assert list(reloaded["train"]["class_name"]) == list(rebuilt["train"]["class_name"])
    assert len(set(reloaded["train"]["class_name"])) == 3
