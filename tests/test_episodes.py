"""Episode sampling (indices) and decoded episodes: determinism, workers, ranks, exclusion, broken videos."""

import logging

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value, Video

from m2df_hf.episodes import MODEL_INPUT_KEYS, EpisodeDataset, EpisodeSampler, collate_episode, model_inputs
from m2df_hf.processing_m2df import M2DFVideoProcessor, VideoDecodeError
from m2df_hf.synthetic import build_synthetic_dataset_dict, make_synthetic_dataset


def _check_episode(ep, labels, way, shot, query):
    assert ep.class_ids.shape == (way,) and len(set(ep.class_ids.tolist())) == way
    assert ep.support_indices.shape == ep.support_labels.shape == (way * shot,)
    assert ep.query_indices.shape == ep.query_labels.shape == (way * query,)
    rows = np.concatenate([ep.support_indices, ep.query_indices])
    assert len(set(rows.tolist())) == len(rows)  # support and queries distinct
    # the episode label j means the split class class_ids[j]
    assert np.array_equal(labels[ep.support_indices], ep.class_ids[ep.support_labels])
    assert np.array_equal(labels[ep.query_indices], ep.class_ids[ep.query_labels])
    assert np.bincount(ep.support_labels, minlength=way).tolist() == [shot] * way
    assert np.bincount(ep.query_labels, minlength=way).tolist() == [query] * way


def test_episode_is_a_pure_function_of_seed_and_index():
    labels = np.repeat(np.arange(12), 9)
    np.random.default_rng(0).shuffle(labels)
    sampler = EpisodeSampler(labels, way=5, shot=2, query_per_class=3, seed=11)
    episodes = [sampler.episode(i) for i in range(40)]
    for ep in episodes:
        _check_episode(ep, labels, 5, 2, 3)
    restarted = EpisodeSampler(labels, way=5, shot=2, query_per_class=3, seed=11)
    for i in reversed(range(40)):  # another instance, another order: the same episodes
        again = restarted.episode(i)
        for field in ("class_ids", "support_indices", "support_labels", "query_indices", "query_labels"):
            assert np.array_equal(getattr(again, field), getattr(episodes[i], field))
    other_seed = EpisodeSampler(labels, way=5, shot=2, query_per_class=3, seed=12).episode(0)
    assert not np.array_equal(other_seed.support_indices, episodes[0].support_indices)
    assert len({tuple(ep.class_ids) for ep in episodes}) > 30
    # orders are shuffled (not class-major), and every class gets drawn
    assert any(not np.array_equal(ep.query_labels, np.sort(ep.query_labels)) for ep in episodes)
    assert set(np.concatenate([ep.class_ids for ep in episodes]).tolist()) == set(range(12))


def test_small_classes_are_excluded_with_a_warning_and_too_few_is_an_error():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 5 + [3] * 6 + [4] * 3)
    with pytest.warns(UserWarning, match=r"fewer than 4 videos.*1 \('pour'\): 2, 4 \('talk'\): 3"):
        sampler = EpisodeSampler(labels, way=3, shot=1, query_per_class=3, seed=0,
                                 class_names=["fencing", "pour", "run", "sit", "talk"])
    assert sampler.class_ids.tolist() == [0, 2, 3] and sampler.excluded_classes == [1, 4]
    for i in range(20):
        assert set(sampler.episode(i).class_ids.tolist()) == {0, 2, 3}
    counts = r"0: 5, 1: 2, 2: 5, 3: 6, 4: 3"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"Only 3 class\(es\).*way=4.*" + counts):
        EpisodeSampler(labels, way=4, shot=1, query_per_class=3)
    with pytest.warns(UserWarning, match="fewer than 6 videos"):  # min_videos raises the bar
        assert EpisodeSampler(labels, 1, 1, 1, min_videos=6).class_ids.tolist() == [3]
    with pytest.raises(ValueError, match="min_videos=1 is below"):
        EpisodeSampler(labels, 2, 1, 1, min_videos=1)


# ------------------------------------------------------------------------------------------------------------
# Decoded episodes over the synthetic set
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_train(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_classes=12, videos_per_class=4, num_frames=6,
                                  height=32, width=40, seed=0, progress=False)
    return build_synthetic_dataset_dict(root)["train"]  # 8 classes x 4 videos


def _processor():
    return M2DFVideoProcessor(num_frames=3, resize_short_side=24, crop_size=20)


def _episode_ds(split, **kw):
    args = dict(way=3, shot=1, query_per_class=2, num_episodes=4, seed=5, training=True)
    return EpisodeDataset(split, _processor(), **{**args, **kw})


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_episode_items_hold_model_inputs_names_and_ids(synthetic_train):
    ds = _episode_ds(synthetic_train)
    item = ds[0]
    assert item["support_pixel_values"].shape == (3, 3, 3, 20, 20)
    assert item["query_pixel_values"].shape == (6, 3, 3, 20, 20)
    assert item["support_labels"].dtype == item["query_labels"].dtype == torch.int64
    ep = ds.sampler.episode(0)
    assert item["class_ids"].tolist() == ep.class_ids.tolist()
    names = synthetic_train.features["label"].names
    assert item["class_names"] == [names[c] for c in ep.class_ids]  # label names are the prompt names
    labels = np.asarray(synthetic_train["label"])
    assert np.array_equal(labels[item["query_indices"].numpy()], ep.class_ids[item["query_labels"].numpy()])
    # the pixels are the processor's, with the slot's generator: slot 0 is the first support video
    g = torch.Generator().manual_seed(ds._slot_seed(0, 0))
    video = synthetic_train[int(ep.support_indices[0])]["video"]
    assert torch.equal(item["support_pixel_values"][0], _processor().load_clip(video, training=True, generator=g))
    assert set(model_inputs(item)) == set(MODEL_INPUT_KEYS)


def test_same_episodes_with_0_or_2_workers_and_after_restart(synthetic_train):
    ds = _episode_ds(synthetic_train)
    direct = [ds[i] for i in range(4)]
    loaded = list(torch.utils.data.DataLoader(_episode_ds(synthetic_train), batch_size=None, num_workers=2))
    collated = list(torch.utils.data.DataLoader(_episode_ds(synthetic_train), batch_size=1, num_workers=0,
                                                collate_fn=collate_episode))
    for a, b, c in zip(direct, loaded, collated, strict=True):
        _assert_same(a, b)
        _assert_same(a, c)
    assert len(loaded) == 4
    # training augmentation really varies between episodes, evaluation repeats exactly
    assert not torch.equal(direct[0]["query_pixel_values"], direct[1]["query_pixel_values"])
    ev = _episode_ds(synthetic_train, training=False)
    _assert_same(ev[2], _episode_ds(synthetic_train, training=False)[2])


def test_ranks_draw_disjoint_episodes(synthetic_train):
    ranks = [_episode_ds(synthetic_train, rank=r, world_size=3, num_episodes=5) for r in range(3)]
    indices = [[ds.episode_index(i) for i in range(5)] for ds in ranks]
    assert sorted(sum(indices, [])) == list(range(15))
    assert ranks[1][0]["episode_index"] == 1 and ranks[2][1]["episode_index"] == 5
    single = _episode_ds(synthetic_train, num_episodes=15)
    _assert_same(ranks[2][1], single[5])  # rank r item i is episode i * world_size + r of one process
    with pytest.raises(ValueError, match="rank"):
        _episode_ds(synthetic_train, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------------------------
# Broken videos next to good ones
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def split_with_broken_files(tmp_path, video_factory):
    rows = {"video": [], "label": [], "class_name": [], "video_id": [], "num_frames": []}
    broken = {}
    for c in range(3):
        for k in range(4):
            path = video_factory(f"c{c}_{k}.mp4", num_frames=6, height=24, width=32, seed=10 * c + k)
            if c == 0 and k == 0:
                (tmp_path / "c0_0.mp4").write_bytes(b"")  # zero-byte
            if c == 0 and k == 1:
                data = (tmp_path / "c0_1.mp4").read_bytes()
                (tmp_path / "c0_1.mp4").write_bytes(data[: len(data) // 3])  # truncated
            if c == 1 and k == 0:
                (tmp_path / "c1_0.mp4").write_text("not a video\n")  # text file
            if c == 2 and k == 3:
                (tmp_path / "c2_3.mp4").unlink()  # missing
            rows["video"].append({"path": path, "bytes": None})
            rows["label"].append(c)
            rows["class_name"].append(f"class {c}")
            rows["video_id"].append(f"c{c}_{k}")
            rows["num_frames"].append(6)
    broken = {0, 1, 4, 11}
    features = Features({"video": Video(decode=False), "label": ClassLabel(names=["c0", "c1", "c2"]),
                         "class_name": Value("string"), "video_id": Value("string"), "num_frames": Value("int32")})
    return Dataset.from_dict(rows, features=features), broken


def test_training_replaces_broken_videos_by_same_class_ones(split_with_broken_files, caplog):
    split, broken = split_with_broken_files
    labels = np.asarray(split["label"])
    ds = EpisodeDataset(split, M2DFVideoProcessor(num_frames=2, resize_short_side=20, crop_size=16), way=3, shot=1,
                        query_per_class=1, num_episodes=12, seed=0, training=True)
    with caplog.at_level(logging.WARNING, logger="m2df_hf.episodes"):
        items = [ds[i] for i in range(12)]
    total = 0
    for i, item in enumerate(items):
        ep = ds.sampler.episode(i)
        drawn = np.concatenate([ep.support_indices, ep.query_indices])
        used = np.concatenate([item["support_indices"].numpy(), item["query_indices"].numpy()])
        assert not set(used.tolist()) & broken  # never a broken file in the tensors
        assert len(set(used.tolist())) == len(used)  # still distinct
        assert np.array_equal(labels[used], labels[drawn])  # replaced within the class
        assert item["num_decode_failures"] == len(set(drawn.tolist()) & broken)
        assert np.array_equal(used[~np.isin(drawn, list(broken))], drawn[~np.isin(drawn, list(broken))])
        total += item["num_decode_failures"]
    assert total > 0
    assert {row for _, row, _ in ds.decode_failures} == {r for r in broken if any(
        r in np.concatenate([ds.sampler.episode(i).support_indices, ds.sampler.episode(i).query_indices])
        for i in range(12))}
    assert "replacing row" in caplog.text and "c0_0.mp4" in caplog.text
    # deterministic: a fresh dataset (new process state) gives the same replacements and pixels
    fresh = EpisodeDataset(split, M2DFVideoProcessor(num_frames=2, resize_short_side=20, crop_size=16), way=3,
                           shot=1, query_per_class=1, num_episodes=12, seed=0, training=True)
    for i in (11, 3, 0):
        _assert_same(fresh[i], items[i])


def test_evaluation_raises_on_a_broken_video(split_with_broken_files):
    split, broken = split_with_broken_files
    ds = EpisodeDataset(split, M2DFVideoProcessor(num_frames=2, resize_short_side=20, crop_size=16), way=3, shot=1,
                        query_per_class=1, num_episodes=30, seed=0, training=False)
    bad = next(i for i in range(30) if set(np.concatenate(
        [ds.sampler.episode(i).support_indices, ds.sampler.episode(i).query_indices]).tolist()) & broken)
    with pytest.raises(VideoDecodeError, match=r"c\d_\d\.mp4"):
        ds[bad]


def test_training_gives_up_clearly_when_a_class_has_no_decodable_video(tmp_path, video_factory):
    paths = [video_factory(f"v{k}.mp4", num_frames=4, height=24, width=32, seed=k) for k in range(4)]
    for k in (0, 1):
        (tmp_path / f"v{k}.mp4").write_bytes(b"")
    split = Dataset.from_dict({"video": [{"path": p, "bytes": None} for p in paths], "label": [0, 0, 1, 1],
                               "class_name": ["zero", "zero", "one", "one"]},
                              features=Features({"video": Video(decode=False), "label": ClassLabel(names=["a", "b"]),
                                                 "class_name": Value("string")}))
    ds = EpisodeDataset(split, M2DFVideoProcessor(num_frames=2, resize_short_side=20, crop_size=16), way=2, shot=1,
                        query_per_class=1, num_episodes=1, seed=0, training=True)
    with pytest.raises(RuntimeError, match=r"no decodable replacement left for class 0 \('a'\)"):
        ds[0]
