"""The evaluation protocol: CI95 on known inputs, cached == uncached, each video encoded once, the CLI."""

import math

import numpy as np
import pytest
import torch

from configuration_m2df import M2DFConfig
from m2df_hf.evaluation import (
    FeatureCache,
    compute_text_table,
    evaluate_episodes,
    load_episode_metric,
    model_fingerprint,
    split_class_names,
)
from m2df_hf.processing_m2df import M2DFVideoProcessor
from m2df_hf.synthetic import build_synthetic_dataset_dict, make_synthetic_dataset
from modeling_m2df import M2DFModel

NUM_FRAMES = 4



@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_eval")
    # 25 classes -> 16 / 3 / 6 train / val / test classes, 4 videos each
    make_synthetic_dataset(root, num_classes=25, videos_per_class=4, num_frames=8, height=32, width=32, seed=3,
                           progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_split(synthetic_root):
    return build_synthetic_dataset_dict(synthetic_root)["test"]


def tiny_model(preset, clip_config):
    torch.manual_seed(0)
    return M2DFModel(M2DFConfig.from_preset(preset, clip_config=clip_config, num_frames=NUM_FRAMES)).eval()


def processor_for(preset):
    return M2DFVideoProcessor.from_preset(preset, num_frames=NUM_FRAMES, resize_short_side=32, crop_size=32)


# ---------------------------------------------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------------------------------------------


def test_ci95_on_known_inputs():
    metric = load_episode_metric()
    scores = metric.compute(episode_accuracies=[1.0, 0.6, 0.8, 0.6])
    # mean 0.75; deviations .25 -.15 .05 -.15 -> population variance .11 / 4 = .0275 (ddof = 0, not 1)
    assert scores["accuracy"] == pytest.approx(75.0)
    assert scores["ci95"] == pytest.approx(100 * 1.96 * math.sqrt(0.0275) / 2)  # 16.2515...
    assert scores["ci95"] == pytest.approx(16.2515, abs=1e-4)
    assert scores["num_episodes"] == 4
    # add_batch accumulates like one call
    metric.add_batch(episode_accuracies=[1.0, 0.6])
    metric.add_batch(episode_accuracies=[0.8, 0.6])
    assert metric.compute()["ci95"] == pytest.approx(scores["ci95"])
    # identical episodes: no spread
    assert metric.compute(episode_accuracies=[0.4] * 10)["ci95"] == pytest.approx(0.0)


def test_metric_rejects_bad_input():
    metric = load_episode_metric.__wrapped__()  # a fresh instance, not the cached one
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.compute(episode_accuracies=[0.5, 80.0])  # percentages instead of fractions
    with pytest.raises(ValueError, match="no episodes"):
        metric.compute(episode_accuracies=[])


# ---------------------------------------------------------------------------------------------------------------
# Cached == uncached
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["paper", "reference"])  # reference: PPS samples at test (seeded per episode)
def test_cached_evaluation_equals_uncached(preset, tiny_split, clip_config, tiny_tokenizer):
    model, processor = tiny_model(preset, clip_config), processor_for(preset)
    table = compute_text_table(model, tiny_tokenizer, split_class_names(tiny_split))
    kwargs = dict(text_table=table, way=3, shot=2, query_per_class=1, num_episodes=12, seed=5, progress=False)
    cached = evaluate_episodes(model, tiny_split, processor, cached=True, video_batch_size=5, **kwargs)
    uncached = evaluate_episodes(model, tiny_split, processor, cached=False, **kwargs)

    np.testing.assert_array_equal(cached.predictions, uncached.predictions)
    np.testing.assert_array_equal(cached.query_labels, uncached.query_labels)
    assert cached.accuracy == uncached.accuracy and cached.ci95 == uncached.ci95
    # per-episode accuracies -> the metric, recomputed here independently
    acc = (cached.predictions == cached.query_labels).mean(axis=1)
    assert cached.accuracy == pytest.approx(100 * acc.mean())
    assert cached.ci95 == pytest.approx(100 * 1.96 * acc.std() / math.sqrt(12))
    # encodings: every distinct video once vs every episode's 3*2 + 3*1 videos
    assert uncached.backbone_frame_encodings == 12 * 9 * NUM_FRAMES
    assert cached.backbone_frame_encodings < uncached.backbone_frame_encodings
    assert cached.backbone_frame_encodings % NUM_FRAMES == 0


def test_each_video_is_encoded_once_and_cache_is_reused(tiny_split, clip_config, tiny_tokenizer):
    from m2df_hf.episodes import EpisodeSampler

    model, processor = tiny_model("paper", clip_config), processor_for("paper")
    encoded = []
    original = model.get_video_features

    def counting(pixel_values):
        encoded.append(pixel_values.shape[0])
        return original(pixel_values)

    model.get_video_features = counting
    sampler = EpisodeSampler(tiny_split["label"], way=3, shot=2, query_per_class=1, seed=1)
    used = {int(i) for e in range(30) for i in np.concatenate([sampler.episode(e).support_indices,
                                                                 sampler.episode(e).query_indices])}
    cache = FeatureCache()
    first = evaluate_episodes(model, tiny_split, processor, tokenizer=tiny_tokenizer, way=3, shot=2, num_episodes=30,
                              seed=1, cache=cache, video_batch_size=4, progress=False)
    assert sum(encoded) == len(used) and first.backbone_frame_encodings == len(used) * NUM_FRAMES
    assert max(encoded) <= 4  # fixed chunks of video_batch_size videos
    # same model, same cache: nothing is encoded again, same numbers
    second = evaluate_episodes(model, tiny_split, processor, tokenizer=tiny_tokenizer, way=3, shot=2,
                               num_episodes=30, seed=1, cache=cache, progress=False)
    assert sum(encoded) == len(used) and second.backbone_frame_encodings == 0
    np.testing.assert_array_equal(first.predictions, second.predictions)
    # other weights -> other fingerprint -> the stale features are not used
    fingerprint = model_fingerprint(model, processor)
    with torch.no_grad():
        model.vision_tower.visual_projection.weight.mul_(2.0)
    assert model_fingerprint(model, processor) != fingerprint
    evaluate_episodes(model, tiny_split, processor, tokenizer=tiny_tokenizer, way=3, shot=2, num_episodes=30, seed=1,
                      cache=cache, progress=False)
    assert sum(encoded) == 2 * len(used)


def test_one_cache_reused_across_splits_without_video_ids_keeps_them_apart(tiny_split, clip_config, tiny_tokenizer,
                                                                           tmp_path):
    """Without a video_id column the video key is the row index: split B's row 5 must not get split A's."""
    model, processor = tiny_model("paper", clip_config), processor_for("paper")
    split_a = tiny_split.remove_columns("video_id")
    split_b = split_a.select(list(range(len(split_a)))[::-1])  # same classes, every row holds another video
    kwargs = dict(tokenizer=tiny_tokenizer, way=3, shot=2, num_episodes=12, seed=6, progress=False)
    alone = evaluate_episodes(model, split_b, processor, cache=FeatureCache(), **kwargs)
    for cache_dir in (None, tmp_path):  # in memory, and through the files on disk
        shared = FeatureCache(cache_dir)
        evaluate_episodes(model, split_a, processor, cache=shared, **kwargs)
        after_a = evaluate_episodes(model, split_b, processor, cache=shared, **kwargs)
        assert after_a.backbone_frame_encodings == alone.backbone_frame_encodings > 0  # nothing borrowed from A
        np.testing.assert_array_equal(after_a.predictions, alone.predictions)
        again = evaluate_episodes(model, split_b, processor, cache=FeatureCache(cache_dir) if cache_dir else shared,
                                  **kwargs)
        assert again.backbone_frame_encodings == 0  # B's own features are reused
        np.testing.assert_array_equal(again.predictions, alone.predictions)


def test_disk_cache_round_trip(tiny_split, clip_config, tiny_tokenizer, tmp_path):
    model, processor = tiny_model("paper", clip_config), processor_for("paper")
    kwargs = dict(tokenizer=tiny_tokenizer, way=3, shot=1, num_episodes=10, seed=2, progress=False)
    first = evaluate_episodes(model, tiny_split, processor, cache=FeatureCache(tmp_path), **kwargs)
    second = evaluate_episodes(model, tiny_split, processor, cache=FeatureCache(tmp_path), **kwargs)  # new process
    assert first.backbone_frame_encodings > 0 and second.backbone_frame_encodings == 0
    np.testing.assert_array_equal(first.predictions, second.predictions)


def test_undecodable_video_excludes_its_episodes(tiny_split, clip_config, tiny_tokenizer, tmp_path):
    model, processor = tiny_model("paper", clip_config), processor_for("paper")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    videos = list(tiny_split["video"])
    videos[0] = {"path": str(broken), "bytes": None}
    damaged = tiny_split.remove_columns("video").add_column("video", videos, feature=tiny_split.features["video"])
    kwargs = dict(tokenizer=tiny_tokenizer, way=3, shot=2, num_episodes=20, seed=4, progress=False)
    clean = evaluate_episodes(model, tiny_split, processor, **kwargs)
    result = evaluate_episodes(model, damaged, processor, **kwargs)
    assert result.excluded_episodes and result.num_episodes == 20 - len(result.excluded_episodes)
    assert any("broken.mp4" in message for message in result.failed_videos)
    kept = [e for e in range(20) if e not in result.excluded_episodes]
    np.testing.assert_array_equal(result.predictions, clean.predictions[kept])


def test_evaluate_cli_help_has_examples(capsys):
    import argparse

    from m2df_hf.evaluation import add_cli, run_cli

    parser = argparse.ArgumentParser(prog="m2df")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--model", "m", "--dataset", "d", "--shot", "5", "--json"])
    assert args.func is run_cli and (args.episodes, args.way, args.shot, args.seed) == (10_000, 5, 5, 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "m2df evaluate --model" in text and "--episodes" in text


def test_open_dataset_reads_a_synthetic_root_and_names_what_it_accepts(synthetic_root, tmp_path):
    """`m2df evaluate --dataset data/synthetic-demo` (what the demo writes, and the help's example) just works."""
    import re
    from pathlib import Path

    import yaml

    from m2df_hf.evaluation import EXAMPLES, open_dataset

    expected = build_synthetic_dataset_dict(synthetic_root)
    for source in ("auto", "synthetic"):
        got = open_dataset(str(synthetic_root), source)
        assert sorted(got) == ["test", "train", "val"]
        for split in got:
            assert got[split].to_list() == expected[split].to_list()
    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    assert re.search(r"--dataset (\S+)", EXAMPLES).group(1) == demo["data"]["path"]
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError, match="not a save_to_disk folder, a folder of parquet files or a synthetic set "
                                         "root \\(classes.json and synthetic.json\\)"):
        open_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="not a synthetic set root: missing classes.json, synthetic.json"):
        open_dataset(str(tmp_path), "synthetic")
