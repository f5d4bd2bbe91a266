"""Video decoding, frame sampling and transforms for CLIP-M2DF (Guo et al. 2024).

This file is uploaded to the Hub next to the model and loaded with
``AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)``, so it is self-contained: torch, numpy
and transformers only, with decord imported under ``try/except`` (transformers' ``check_imports`` skips such
blocks, so decord stays optional for users who pass decoded frames).

One code path serves training, evaluation and the pipeline: ``M2DFVideoProcessor.__call__``.

* **Decoding** (``read_video_frames``, ``count_frames``): decord, from a path, from bytes, from a datasets
  ``Video(decode=False)`` row ``{"path": ..., "bytes": ...}``, or an already decoded ``uint8 [T, H, W, 3]``
  array. Only the sampled frames are decoded (``VideoReader.get_batch``). Any failure raises
  ``VideoDecodeError`` (a ``ValueError``) that names the file, or "bytes of length n".
* **Frame sampling** (``sample_frame_indices``): ``"tsn"`` (the paper: T equal segments, a random frame per
  segment in training, the segment centres at evaluation) and ``"linspace_jitter"`` (the official release).
  Videos shorter than T frames are kept by repeating frames; the release drops them.
* **Transforms** in plain torch: resize the short side (uint8 bilinear with antialias, within a grey level of the
  release's PIL bilinear), random crop + horizontal flip in training (drawn once per clip, so every frame gets the
  same crop and flip), centre crop at evaluation, then [0, 1] scaling and optional CLIP mean/std.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.feature_extraction_utils import FeatureExtractionMixin

try:
    import decord
except ImportError:  # decoding files needs decord; decoded uint8 arrays work without it
    decord = None

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SAMPLERS = ("tsn", "linspace_jitter")

# decord threads per reader: data-loading parallelism comes from DataLoader workers, one thread each.
DECORD_NUM_THREADS = 1


class VideoDecodeError(ValueError):
    """A video could not be opened or decoded; the message names the file (or the byte length)."""


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


def describe_video(video: Any) -> str:
    """A short human-readable name for a video input, used in error messages."""
    if isinstance(video, dict):
        if video.get("path"):
            return repr(str(video["path"]))
        if video.get("bytes") is not None:
            return f"bytes of length {len(video['bytes'])}"
        return "an empty video row (no path and no bytes)"
    if isinstance(video, (str, os.PathLike)):
        return repr(os.fspath(video))
    if isinstance(video, (bytes, bytearray, memoryview)):
        return f"bytes of length {len(video)}"
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return f"an array of shape {tuple(video.shape)}"
    return f"an object of type {type(video).__name__}"


def _as_frame_array(video: np.ndarray | torch.Tensor) -> np.ndarray:
    frames = video.numpy() if isinstance(video, torch.Tensor) else video
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"Decoded videos must be uint8 arrays of shape [T, H, W, 3]; got dtype {frames.dtype} and shape "
            f"{tuple(frames.shape)}."
        )
    if frames.shape[0] == 0:
        raise VideoDecodeError("The decoded video array has no frames (shape [0, H, W, 3]).")
    return frames


class VideoSource:
    """An opened video: a decord reader, or a decoded array. Opening validates the input."""

    def __init__(self, video: Any):
        self.name = describe_video(video)
        self.frames = None
        self.reader = None
        if isinstance(video, (np.ndarray, torch.Tensor)):
            self.frames = _as_frame_array(video)
            return
        source = self._decord_source(video)
        if decord is None:
            raise ImportError(
                "Decoding video files needs decord (`pip install decord`); alternatively pass decoded uint8 "
                "frames of shape [T, H, W, 3]."
            )
        try:
            self.reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=DECORD_NUM_THREADS)
            num = len(self.reader)
        except Exception as err:  # decord raises RuntimeError/DECORDError with C++ messages
            raise VideoDecodeError(f"Could not open video {self.name}: {err}") from err
        if num <= 0:
            raise VideoDecodeError(f"Video {self.name} has no decodable frame.")

    def _decord_source(self, video: Any):
        if isinstance(video, dict):
            if video.get("bytes") is not None:
                video = video["bytes"]
            elif video.get("path"):
                video = video["path"]
            else:
                raise VideoDecodeError("A video row has neither 'bytes' nor 'path'.")
        if isinstance(video, (bytes, bytearray, memoryview)):
            if len(video) == 0:
                raise VideoDecodeError("Could not open video bytes of length 0: empty input.")
            return io.BytesIO(bytes(video))
        if isinstance(video, (str, os.PathLike)):
            path = os.fspath(video)
            if not os.path.isfile(path):
                raise VideoDecodeError(f"Video file {path!r} does not exist.")
            if os.path.getsize(path) == 0:
                raise VideoDecodeError(f"Video file {path!r} is empty (0 bytes).")
            return path
        raise ValueError(
            f"Unsupported video input: {self.name}. Pass a path, bytes, a {{'path', 'bytes'}} dict, or a uint8 "
            "array [T, H, W, 3]."
        )

    def __len__(self) -> int:
        return self.frames.shape[0] if self.frames is not None else len(self.reader)

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode only ``indices`` -> uint8 ``[len(indices), H, W, 3]``."""
        indices = np.asarray(indices, dtype=np.int64)
        num = len(self)
        if indices.size and (indices.min() < 0 or indices.max() >= num):
            raise ValueError(f"Frame indices {indices.tolist()} out of range for video {self.name} with {num} frames.")
        if self.frames is not None:
            return self.frames[indices]
        try:
            frames = self.reader.get_batch(indices.tolist()).asnumpy()
        except Exception:
            # decord 0.6 fails get_batch for a few frame widths (16, 24, 48, 72 px); frame by frame works.
            frames = self._get_frames_one_by_one(indices)
        if frames.shape[0] != len(indices):
            raise VideoDecodeError(
                f"Video {self.name} returned {frames.shape[0]} frames for {len(indices)} requested indices."
            )
        return frames

    def _get_frames_one_by_one(self, indices: np.ndarray) -> np.ndarray:
        """Per-frame decoding, repairing decord's mislabelled rows.

        For widths 16, 24, 48 and 72, decord 0.6 returns each RGB frame as ``[H, W, 4]`` whose bytes are really
        ``[H, W', 3]`` rows padded to a wider ``W'`` (e.g. 64 for 48); the first ``W`` pixels of each row match
        PyAV's decoding exactly.
        """
        frames = []
        for index in indices.tolist():
            try:
                frame = self.reader[index].asnumpy()
            except Exception as err:
                raise VideoDecodeError(f"Could not decode frame {index} of video {self.name}: {err}") from err
            if frame.ndim == 3 and frame.shape[-1] != 3:
                height, width = frame.shape[:2]
                if frame.size % (height * 3) or frame.size // (height * 3) < width:
                    raise VideoDecodeError(f"Video {self.name} decoded to an unexpected frame shape {frame.shape}.")
                frame = frame.reshape(height, -1, 3)[:, :width]
            frames.append(frame)
        return np.ascontiguousarray(np.stack(frames))


def count_frames(video: Any) -> int:
    """Number of frames of ``video`` (path, bytes, ``{"path","bytes"}`` row, or uint8 ``[T, H, W, 3]``).

    Raises ``VideoDecodeError`` (a ``ValueError``) naming the file when it cannot be opened.
    """
    return len(VideoSource(video))


def read_video_frames(video: Any, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Decode ``indices`` of ``video`` (all frames when ``None``) -> uint8 ``[len(indices), H, W, 3]``."""
    source = VideoSource(video)
    if indices is None:
        indices = np.arange(len(source))
    return source.get_frames(indices)


# --------------------------------------------------------------------------------------------------------------
# Frame sampling
# --------------------------------------------------------------------------------------------------------------


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive) from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def sample_frame_indices(
    num_video_frames: int,
    num_frames: int,
    mode: str = "tsn",
    training: bool = False,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Choose ``num_frames`` (T) frame indices of a video with ``num_video_frames`` (n) frames -> int64 ``[T]``.

    ``mode="tsn"`` (the paper, "TSN sparse sampling, uniform 8 segments"): the video is cut into T segments
    ``[t*n//T, (t+1)*n//T)``; training takes a uniformly random frame of each segment, evaluation its centre
    (``start + len//2``), so evaluation is deterministic.

    ``mode="linspace_jitter"`` (the official release): ``floor(linspace(start, end, T))``. In training,
    ``pad = int(min(5, (n - T) / 2))``; when ``pad >= 1``, ``start ~ U{0..pad}`` and ``end ~ U{n-1-pad..n-1}``,
    otherwise ``[0, n-1]``. At evaluation ``[start, end] = [1, n-2]``. Both fall back to ``[0, n-1]`` when
    ``end - start < T``.

    Videos shorter than T frames are **kept** by repeating frames, in temporal order (``tsn``:
    ``arange(T) * n // T``; ``linspace_jitter``: ``floor(linspace(0, n-1, T))``). The release drops them when
    it builds its splits.

    Random draws use ``generator`` (``torch.Generator``), so a seeded generator reproduces the indices.
    """
    n, T = int(num_video_frames), int(num_frames)
    if n < 1:
        raise ValueError(f"Cannot sample frames from a video with {n} frames.")
    if T < 1:
        raise ValueError(f"num_frames must be >= 1, got {T}.")
    if mode == "tsn":
        if n < T:
            return (np.arange(T, dtype=np.int64) * n) // T
        bounds = (np.arange(T + 1, dtype=np.int64) * n) // T
        starts, lengths = bounds[:-1], np.diff(bounds)  # every length >= 1 since n >= T
        if training:
            offsets = torch.floor(torch.rand(T, generator=generator, dtype=torch.float64) * torch.from_numpy(lengths))
            return starts + offsets.long().numpy()
        return starts + lengths // 2
    if mode == "linspace_jitter":
        if training:
            pad = int(min(5, (n - T) / 2))
            if pad < 1:
                start, end = 0, n - 1
            else:
                start = _randint(0, pad, generator)
                end = _randint(n - 1 - pad, n - 1, generator)
        else:
            start, end = 1, n - 2
        if end - start < T:
            start, end = 0, n - 1
        return np.floor(np.linspace(start, end, T)).astype(np.int64)
    raise ValueError(f"Unknown frame sampler {mode!r}; expected one of {SAMPLERS}.")


# --------------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------------


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``[T, 3, H, W]`` so that the short side is ``size`` (aspect kept; long side truncated to int).

    Bilinear with antialias on uint8, rounded to uint8 like PIL's bilinear resize in the release (PIL also widens
    its kernel when downscaling); the two agree to about one grey level. torch's uint8 channels-last kernel is
    about 10x faster than resizing float32.
    """
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)


def transform_clip(
    frames: np.ndarray | torch.Tensor,
    resize_short_side_to: int,
    crop_size: int,
    training: bool,
    do_flip: bool,
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, crop, crop]``; one crop and one flip for the whole clip.

    Training: resize the short side, random ``crop_size`` crop, horizontal flip with p = 0.5 when ``do_flip``.
    Evaluation: resize, centre crop. Then values in [0, 1], normalised by mean/std when both are given.
    Random draws, in this order, from ``generator``: flip (only when ``do_flip``), crop top, crop left.
    """
    if isinstance(frames, np.ndarray) and not frames.flags.writeable:
        frames = frames.copy()  # torch warns on read-only arrays (e.g. from datasets' arrow buffers)
    clip = torch.as_tensor(frames)
    if clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"Expected uint8 frames [T, H, W, 3]; got {clip.dtype} {tuple(clip.shape)}.")
    clip = clip.permute(0, 3, 1, 2)  # [T, 3, H, W], channels-last in memory (the fast uint8 resize layout)
    clip = resize_short_side(clip, resize_short_side_to)
    h, w = clip.shape[-2:]
    if crop_size > min(h, w):
        raise ValueError(f"crop_size {crop_size} is larger than the resized frame {h}x{w}.")
    flip = False
    if training:
        if do_flip:
            flip = bool(torch.rand(1, generator=generator).item() < 0.5)
        top = _randint(0, h - crop_size, generator)
        left = _randint(0, w - crop_size, generator)
    else:
        top = int(round((h - crop_size) / 2.0))
        left = int(round((w - crop_size) / 2.0))
    clip = clip[:, :, top : top + crop_size, left : left + crop_size]
    if flip:
        clip = clip.flip(-1)
    clip = clip.float() / 255.0
    if image_mean is not None and image_std is not None:
        mean = torch.tensor(image_mean, dtype=clip.dtype).view(1, 3, 1, 1)
        std = torch.tensor(image_std, dtype=clip.dtype).view(1, 3, 1, 1)
        clip = (clip - mean) / std
    return clip.contiguous()


# --------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------

PRESETS = {
    # The paper: TSN segment sampling, CLIP normalisation.
    "paper": {"sampler": "tsn", "do_normalize": True},
    # The official release: jittered linspace sampling, frames in [0, 1] without mean/std.
    "reference": {"sampler": "linspace_jitter", "do_normalize": False},
}


def _is_single_video(videos: Any) -> bool:
    if isinstance(videos, (str, os.PathLike, bytes, bytearray, memoryview, dict)):
        return True
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        return videos.ndim == 4
    return False


class M2DFVideoProcessor(FeatureExtractionMixin):
    r"""Turns videos into CLIP-M2DF's ``pixel_values [B, T, 3, crop, crop]``.

    Args:
        num_frames (`int`, defaults to 8): frames per video (T).
        sampler (`str`, defaults to `"tsn"`): `"tsn"` (paper) or `"linspace_jitter"` (release).
        resize_short_side (`int`, defaults to 256): the short side after resizing.
        crop_size (`int`, defaults to 224): square crop (random in training, centre at evaluation).
        do_normalize (`bool`, defaults to `True`): subtract `image_mean`, divide by `image_std`.
        image_mean, image_std (`list[float]`, default CLIP's): per-channel statistics (RGB).
        do_flip (`bool`, defaults to `True`): random horizontal flip in training (turn off for SSv2, whose
            labels name directions).

    Example:
        ```python
        proc = M2DFVideoProcessor.from_preset("paper", num_frames=8)
        batch = proc(["a.mp4", "b.mp4"])                           # evaluation, deterministic
        batch = proc(videos, training=True, generator=torch.Generator().manual_seed(0))
        batch["pixel_values"].shape                               # [2, 8, 3, 224, 224]
        ```
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        num_frames: int = 8,
        sampler: str = "tsn",
        resize_short_side: int = 256,
        crop_size: int = 224,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_flip: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if sampler not in SAMPLERS:
            raise ValueError(f"Unknown frame sampler {sampler!r}; expected one of {SAMPLERS}.")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
        if crop_size > resize_short_side:
            raise ValueError(f"crop_size ({crop_size}) must not exceed resize_short_side ({resize_short_side}).")
        self.num_frames = int(num_frames)
        self.sampler = sampler
        self.resize_short_side = int(resize_short_side)
        self.crop_size = int(crop_size)
        self.do_normalize = bool(do_normalize)
        self.image_mean = list(image_mean) if image_mean is not None else list(CLIP_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(CLIP_STD)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std must have 3 values (RGB).")
        self.do_flip = bool(do_flip)

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> "M2DFVideoProcessor":
        """``"paper"`` (TSN, CLIP normalisation) or ``"reference"`` (release: linspace jitter, no normalisation)."""
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[preset], **overrides})

    def load_clip(
        self, video: Any, training: bool = False, generator: torch.Generator | None = None, flip: bool | None = None
    ) -> torch.Tensor:
        """One video -> float32 ``[T, 3, crop, crop]``: sample indices, decode only those, transform."""
        source = VideoSource(video)
        indices = sample_frame_indices(len(source), self.num_frames, self.sampler, training, generator)
        frames = source.get_frames(indices)
        do_flip = self.do_flip if flip is None else bool(flip)
        return transform_clip(
            frames,
            self.resize_short_side,
            self.crop_size,
            training=training,
            do_flip=do_flip,
            image_mean=self.image_mean if self.do_normalize else None,
            image_std=self.image_std if self.do_normalize else None,
            generator=generator,
        )

    def __call__(
        self,
        videos: Any,
        training: bool = False,
        generator: torch.Generator | None = None,
        flip: bool | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process one video or a list of videos -> ``BatchFeature(pixel_values=[B, T, 3, crop, crop])``.

        Args:
            videos: a path, bytes, a ``{"path", "bytes"}`` row, a uint8 ``[T, H, W, 3]`` array, or a list of these
                (a uint8 ``[B, T, H, W, 3]`` array is a batch).
            training: random frame offsets, crop and flip (from ``generator``) instead of the deterministic ones.
            generator: a seeded ``torch.Generator`` for reproducible augmentation (global RNG when ``None``).
            flip: overrides ``do_flip`` for this call.
            return_tensors: ``"pt"`` (default) or ``"np"``.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments for M2DFVideoProcessor: {sorted(kwargs)}")
        if _is_single_video(videos):
            videos = [videos]
        videos = list(videos)
        if not videos:
            raise ValueError("No videos given.")
        clips = [self.load_clip(v, training=training, generator=generator, flip=flip) for v in videos]
        return BatchFeature({"pixel_values": torch.stack(clips)}, tensor_type=return_tensors)


M2DFVideoProcessor.register_for_auto_class("AutoFeatureExtractor")

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "M2DFVideoProcessor",
    "VideoDecodeError",
    "VideoSource",
    "count_frames",
    "read_video_frames",
    "sample_frame_indices",
    "transform_clip",
]
