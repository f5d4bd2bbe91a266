"""Video decoding, frame sampling, transforms and the saved/Auto-loaded M2DFVideoProcessor."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import write_video

from m2df_hf.processing_m2df import (
    CLIP_MEAN,
    CLIP_STD,
    M2DFVideoProcessor,
    VideoDecodeError,
    count_frames,
    read_video_frames,
    sample_frame_indices,
    transform_clip,
)


def pyav_decode(path):
    """Every frame with PyAV: an independent decoder to check decord's frames against."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# ------------------------------------------------------------------------------------------------------------
# Frame sampling
# ------------------------------------------------------------------------------------------------------------


def test_tsn_eval_takes_segment_centres():
    # n=16, T=8: segments [0,2), [2,4), ... -> centre = start + 2 // 2
    assert sample_frame_indices(16, 8, "tsn").tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    # n=20: bounds 0,2,5,7,10,12,15,17,20 -> lengths 2,3,2,3,... -> centres
    assert sample_frame_indices(20, 8, "tsn").tolist() == [1, 3, 6, 8, 11, 13, 16, 18]
    assert sample_frame_indices(8, 8, "tsn").tolist() == list(range(8))
    # evaluation ignores the generator
    g = torch.Generator().manual_seed(5)
    assert sample_frame_indices(20, 8, "tsn", training=False, generator=g).tolist() == [1, 3, 6, 8, 11, 13, 16, 18]


def test_tsn_train_draws_uniformly_within_each_segment():
    n, T = 20, 8
    bounds = [0, 2, 5, 7, 10, 12, 15, 17, 20]
    g = torch.Generator().manual_seed(0)
    draws = np.stack([sample_frame_indices(n, T, "tsn", training=True, generator=g) for _ in range(600)])
    for t in range(T):
        seen = set(draws[:, t].tolist())
        assert seen == set(range(bounds[t], bounds[t + 1])), (t, seen)  # in the segment, and every frame of it
    # reproducible from the generator's seed; another seed differs
    again = [sample_frame_indices(n, T, "tsn", True, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert again[0].tolist() == again[1].tolist() != again[2].tolist()


def test_linspace_jitter_eval_matches_the_release_rule():
    # start 1, end n-2 -> floor(linspace(1, 28, 8)) = 1, 4.86, 8.71, 12.57, 16.43, 20.29, 24.14, 28
    assert sample_frame_indices(30, 8, "linspace_jitter").tolist() == [1, 4, 8, 12, 16, 20, 24, 28]
    # n=9: end - start = 6 < 8 -> fall back to [0, 8]: floor(0, 1.14, 2.29, 3.43, 4.57, 5.71, 6.86, 8)
    assert sample_frame_indices(9, 8, "linspace_jitter").tolist() == [0, 1, 2, 3, 4, 5, 6, 8]
    assert sample_frame_indices(8, 8, "linspace_jitter").tolist() == list(range(8))


def _release_outcomes(n, T):
    """Every index list the release's training rule can produce (section 6.2 of METHOD.md), enumerated."""
    pad = int(min(5, (n - T) / 2))
    pairs = [(0, n - 1)] if pad < 1 else [(s, e) for s in range(pad + 1) for e in range(n - 1 - pad, n)]
    outcomes = set()
    for s, e in pairs:
        if e - s < T:
            s, e = 0, n - 1
        outcomes.add(tuple(int(np.floor(x)) for x in np.linspace(s, e, T)))
    return outcomes


@pytest.mark.parametrize("n", [10, 12, 30])
def test_linspace_jitter_train_covers_exactly_the_release_outcomes(n):
    g = torch.Generator().manual_seed(0)
    draws = {tuple(sample_frame_indices(n, 8, "linspace_jitter", True, g).tolist()) for _ in range(800)}
    assert draws == _release_outcomes(n, 8)


def test_short_videos_repeat_frames_in_order():
    assert sample_frame_indices(3, 8, "tsn").tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert sample_frame_indices(3, 8, "tsn", training=True, generator=torch.Generator()).tolist() == [
        0, 0, 0, 1, 1, 1, 2, 2,
    ]
    # floor(linspace(0, 2, 8)) = 0, .29, .57, .86, 1.14, 1.43, 1.71, 2
    assert sample_frame_indices(3, 8, "linspace_jitter").tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert sample_frame_indices(1, 4, "linspace_jitter", training=True).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 8)
    with pytest.raises(ValueError, match="Unknown frame sampler 'uniform'"):
        sample_frame_indices(10, 8, "uniform")


# ------------------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------------------


def _find_crop(out_frame, raw_frame, crop):
    """(top, left, flipped) such that the raw crop equals ``out_frame``; asserts it is unique."""
    matches = []
    height, width = raw_frame.shape[:2]
    for top in range(height - crop + 1):
        for left in range(width - crop + 1):
            patch = torch.from_numpy(raw_frame[top : top + crop, left : left + crop]).permute(2, 0, 1).float() / 255
            for flipped in (False, True):
                if torch.equal(patch.flip(-1) if flipped else patch, out_frame):
                    matches.append((top, left, flipped))
    assert len(matches) == 1, matches
    return matches[0]


def test_training_crop_and_flip_are_the_same_for_every_frame():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 20, 26, 3), dtype=np.uint8)  # short side 20 = resize target: no resize
    outcomes = set()
    for seed in range(12):
        out = transform_clip(frames, 20, 16, training=True, do_flip=True, image_mean=None, image_std=None,
                             generator=torch.Generator().manual_seed(seed))
        assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
        crop = _find_crop(out[0], frames[0], 16)
        for t in range(1, 4):  # every frame: the same crop and flip
            top, left, flipped = crop
            patch = torch.from_numpy(frames[t, top : top + 16, left : left + 16]).permute(2, 0, 1).float() / 255
            assert torch.equal(out[t], patch.flip(-1) if flipped else patch)
        outcomes.add(crop)
    assert {flipped for _, _, flipped in outcomes} == {False, True}
    assert len({(top, left) for top, left, _ in outcomes}) > 6  # crops really move


def test_same_transform_across_frames_after_resize():
    # Frame t = base + 10 t: resize is linear, so with one crop/flip per clip out[t] - out[0] = 10 t / 255 exactly.
    base = np.random.default_rng(1).integers(0, 150, size=(1, 30, 40, 3))
    frames = (base + 10 * np.arange(6)[:, None, None, None]).astype(np.uint8)
    for seed in range(5):
        out = transform_clip(frames, 24, 20, True, True, None, None, torch.Generator().manual_seed(seed)).double()
        for t in range(6):
            assert (out[t] - out[0] - 10 * t / 255).abs().max() < 1e-5


def test_flip_off_never_flips():
    frames = np.random.default_rng(2).integers(0, 256, size=(2, 18, 22, 3), dtype=np.uint8)
    proc = M2DFVideoProcessor(num_frames=2, resize_short_side=18, crop_size=14, do_normalize=False, do_flip=False)
    for seed in range(16):
        out = proc(frames, training=True, generator=torch.Generator().manual_seed(seed))["pixel_values"][0]
        assert _find_crop(out[0], frames[0], 14)[2] is False
    # a per-call override turns it back on (and the processor's default off again)
    flips = set()
    for seed in range(16):
        out = proc(frames, True, torch.Generator().manual_seed(seed), flip=True)["pixel_values"][0, 0]
        flips.add(_find_crop(out, frames[0], 14)[2])
    assert flips == {False, True}


def test_eval_centre_crop_and_resize():
    frames = np.random.default_rng(3).integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)
    out = transform_clip(frames, 40, 32, False, True, None, None)  # top = round(8/2) = 4, left = round(18/2) = 9
    expected = torch.from_numpy(frames[:, 4:36, 9:41]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(out, expected)
    # short side 40 -> 20 (50 -> 25); a crop of 20 keeps the full height
    assert transform_clip(frames, 20, 20, False, True, None, None).shape == (3, 3, 20, 20)
    tall = np.zeros((1, 60, 30, 3), dtype=np.uint8)
    resized = transform_clip(tall, 15, 15, False, True, None, None)
    assert resized.shape == (1, 3, 15, 15)
    with pytest.raises(ValueError, match="crop_size 32 is larger"):
        transform_clip(frames, 30, 32, False, True, None, None)


def test_resize_is_close_to_pil_bilinear():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    # a smooth image (random low-frequency content) downscaled 120x160 -> 36x48, as the release does with PIL
    coarse = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((160, 120), Image.BICUBIC))
    ours = transform_clip(image[None], 36, 36, False, True, None, None)[0] * 255  # centre 36x36 of 36x48
    pil = np.asarray(Image.fromarray(image).resize((48, 36), Image.BILINEAR)).astype(np.float64)[:, 6:42]
    diff = np.abs(ours.permute(1, 2, 0).double().numpy() - pil)
    assert diff.mean() < 0.5 and diff.max() <= 2.0


def test_normalisation_uses_clip_statistics():
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    frames[..., 0] = 255  # pure red
    out = M2DFVideoProcessor(num_frames=2, resize_short_side=8, crop_size=8)(frames)["pixel_values"]
    expected = torch.tensor([(1 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1],
                             -CLIP_MEAN[2] / CLIP_STD[2]])
    assert (out[0, 0, :, 3, 3] - expected).abs().max() < 1e-6
    raw = M2DFVideoProcessor.from_preset("reference", num_frames=2, resize_short_side=8, crop_size=8)(frames)
    assert torch.equal(raw["pixel_values"][0, 0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


# ------------------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------------------


def test_decord_reads_only_requested_frames_and_matches_pyav(video_factory):
    path = video_factory("a.mp4", num_frames=12, height=32, width=40, seed=1)
    reference = pyav_decode(path)
    assert count_frames(path) == 12 == reference.shape[0]
    assert np.array_equal(read_video_frames(path), reference)
    assert np.array_equal(read_video_frames(path, [9, 2, 2, 11]), reference[[9, 2, 2, 11]])
    with pytest.raises(ValueError, match="out of range"):
        read_video_frames(path, [0, 12])


@pytest.mark.parametrize("width", [48, 72])
def test_widths_that_break_decord_get_batch_still_decode_exactly(tmp_path, width):
    frames = np.random.default_rng(5).integers(0, 256, size=(5, 32, width, 3), dtype=np.uint8)
    path = write_video(tmp_path / "w.mp4", frames)
    assert np.array_equal(read_video_frames(path, [0, 3, 4]), pyav_decode(path)[[0, 3, 4]])


def test_path_bytes_row_and_array_give_identical_pixels(video_factory):
    path = video_factory("b.mp4", num_frames=10, height=36, width=44, seed=2)
    data = open(path, "rb").read()
    proc = M2DFVideoProcessor(num_frames=4, resize_short_side=30, crop_size=24)
    inputs = [path, data, {"path": None, "bytes": data}, {"path": path, "bytes": None}, pyav_decode(path)]
    outs = [proc(v)["pixel_values"] for v in inputs]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    trained = [proc(v, training=True, generator=torch.Generator().manual_seed(3))["pixel_values"] for v in inputs]
    for out in trained[1:]:
        assert torch.equal(out, trained[0])
    batch = proc([path, data])["pixel_values"]
    assert batch.shape == (2, 4, 3, 24, 24) and torch.equal(batch[1], outs[0][0])


def test_broken_files_raise_clear_errors(tmp_path, video_factory):
    good = video_factory("good.mp4", num_frames=8, height=32, width=32)
    data = open(good, "rb").read()
    broken = {
        "zero.mp4": b"",
        "truncated.mp4": data[: len(data) // 2],
        "notes.mp4": b"this is a text file, not a video\n" * 20,
    }
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
    for name in [*broken, "missing.mp4"]:
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=name):
            count_frames(path)
        with pytest.raises(VideoDecodeError, match=name):
            M2DFVideoProcessor(num_frames=2, resize_short_side=32, crop_size=32)(path)
    with pytest.raises(VideoDecodeError, match=f"bytes of length {len(data) // 2}"):
        read_video_frames(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="bytes of length 0"):
        count_frames(b"")
    with pytest.raises(ValueError, match=r"uint8 arrays of shape \[T, H, W, 3\].*\(4, 8, 8\)"):
        count_frames(np.zeros((4, 8, 8), dtype=np.uint8))
    assert count_frames(good) == 8  # the good file next to them is fine


# ------------------------------------------------------------------------------------------------------------
# Processor
# ------------------------------------------------------------------------------------------------------------


def test_processor_presets_and_validation():
    paper = M2DFVideoProcessor.from_preset("paper")
    assert (paper.sampler, paper.do_normalize, paper.num_frames, paper.crop_size) == ("tsn", True, 8, 224)
    ref = M2DFVideoProcessor.from_preset("reference", num_frames=4, do_flip=False)
    assert (ref.sampler, ref.do_normalize, ref.num_frames, ref.do_flip) == ("linspace_jitter", False, 4, False)
    with pytest.raises(ValueError, match="Unknown preset 'x'"):
        M2DFVideoProcessor.from_preset("x")
    with pytest.raises(ValueError, match="crop_size \\(40\\) must not exceed resize_short_side \\(36\\)"):
        M2DFVideoProcessor(resize_short_side=36, crop_size=40)
    with pytest.raises(ValueError, match="Unknown frame sampler"):
        M2DFVideoProcessor(sampler="dense")


def test_processor_save_and_auto_load_in_a_fresh_process(tmp_path, video_factory):
    video = video_factory("c.mp4", num_frames=14, height=40, width=48, seed=3)
    proc = M2DFVideoProcessor.from_preset("reference", num_frames=5, resize_short_side=36, crop_size=32)
    save_dir = tmp_path / "saved"
    proc.save_pretrained(save_dir)
    config = json.loads((save_dir / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {"AutoFeatureExtractor": "processing_m2df.M2DFVideoProcessor"}
    assert (save_dir / "processing_m2df.py").exists()
    expected = proc(video)["pixel_values"].numpy()
    expected_train = proc(video, training=True, generator=torch.Generator().manual_seed(7))["pixel_values"].numpy()

    child = textwrap.dedent(
        f"""
        import sys, importlib.abc, numpy as np, torch

        class Block(importlib.abc.MetaPathFinder):  # the package must not be needed
            def find_spec(self, name, path=None, target=None):
                if name == "m2df_hf" or name.startswith("m2df_hf."):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from transformers import AutoFeatureExtractor
        proc = AutoFeatureExtractor.from_pretrained({str(save_dir)!r}, trust_remote_code=True)
        assert type(proc).__name__ == "M2DFVideoProcessor", type(proc)
        assert "m2df_hf" not in type(proc).__module__, type(proc).__module__
        assert (proc.num_frames, proc.sampler, proc.crop_size, proc.do_normalize) == (5, "linspace_jitter", 32, False)
        np.save({str(tmp_path / "eval.npy")!r}, proc({video!r})["pixel_values"].numpy())
        g = torch.Generator().manual_seed(7)
        np.save({str(tmp_path / "train.npy")!r}, proc({video!r}, training=True, generator=g)["pixel_values"].numpy())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "eval.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), expected_train)


def test_processor_eval_is_deterministic_and_training_follows_the_generator(video_factory):
    video = video_factory("d.mp4", num_frames=30, height=40, width=52, seed=4)
    proc = M2DFVideoProcessor(num_frames=6, resize_short_side=36, crop_size=28)
    assert torch.equal(proc(video)["pixel_values"], proc(video)["pixel_values"])
    a, b, c = (proc(video, True, torch.Generator().manual_seed(s))["pixel_values"] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The evaluation clip equals the centre crop of the decoded TSN centres, computed independently here.
    frames = pyav_decode(video)[sample_frame_indices(30, 6, "tsn")]
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    clip = torch.nn.functional.interpolate(clip, size=(36, 46), mode="bilinear", antialias=True)[:, :, 4:32, 9:37]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    # our resize rounds to uint8 (like PIL in the release): at most one grey level from the float resize
    assert (proc(video)["pixel_values"][0] - (clip / 255 - mean) / std).abs().max() <= 1.01 / 255 / min(CLIP_STD)
