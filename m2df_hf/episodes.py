"""Few-shot episodes: which videos (``EpisodeSampler``) and their decoded tensors (``EpisodeDataset``).

An N-way K-shot episode with Q queries per class draws N classes, then K + Q distinct videos of each class:
the first K are the support set, the other Q the queries. Episode ``i`` is a pure function of ``(seed, i)``
(NumPy's ``SeedSequence([seed, i])``), so restarts, DataLoader worker counts and process counts never change
which videos an episode holds. ``EpisodeDataset`` decodes them with ``M2DFVideoProcessor`` (the same code path
as evaluation and the pipeline) and returns the model's forward keyword arguments.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .processing_m2df import VideoDecodeError

logger = logging.getLogger(__name__)

# The keys of an EpisodeDataset item that are M2DFModel.forward keyword arguments.
MODEL_INPUT_KEYS = ("support_pixel_values", "support_labels", "query_pixel_values", "query_labels")


@dataclass(frozen=True)
class Episode:
    """Indices of one episode, all int64 NumPy arrays.

    Attributes:
        class_ids: ``[N]`` split-level labels of the episode's classes; episode label ``j`` is ``class_ids[j]``.
        support_indices: ``[N*K]`` dataset rows of the support videos (shuffled).
        support_labels: ``[N*K]`` episode labels in ``0..N-1``.
        query_indices: ``[N*Q]`` dataset rows of the query videos (shuffled, disjoint from the support).
        query_labels: ``[N*Q]`` episode labels in ``0..N-1``.
    """

    class_ids: np.ndarray
    support_indices: np.ndarray
    support_labels: np.ndarray
    query_indices: np.ndarray
    query_labels: np.ndarray


class EpisodeSampler:
    """Draws N-way K-shot episodes (indices only) over a split's labels.

    Args:
        labels: the split-level class label of every video (row) of the split.
        way, shot, query_per_class: N, K, Q.
        seed: episodes are a pure function of ``(seed, i)``.
        min_videos: a class needs at least this many videos to be drawn (default and minimum ``shot +
            query_per_class``). Raise it to keep the same classes across different K/Q settings.
        class_names: optional names of the labels, used in warnings and errors.

    Classes with fewer than ``min_videos`` videos are excluded with a warning; fewer than ``way`` remaining
    classes is a ``ValueError`` that lists every class and its count.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        way: int,
        shot: int,
        query_per_class: int,
        seed: int = 0,
        min_videos: int | None = None,
        class_names: Sequence[str] | None = None,
    ):
        if way < 1 or shot < 1 or query_per_class < 0:
            raise ValueError(f"Need way >= 1, shot >= 1, query_per_class >= 0; got {way}, {shot}, {query_per_class}.")
        needed = shot + query_per_class
        if min_videos is None:
            min_videos = needed
        if min_videos < needed:
            raise ValueError(f"min_videos={min_videos} is below shot + query_per_class = {needed}.")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence; got shape {self.labels.shape}.")
        if self.labels.min() < 0:
            raise ValueError(f"labels must be >= 0; got {int(self.labels.min())}.")
        self.way, self.shot, self.query_per_class = int(way), int(shot), int(query_per_class)
        self.seed = int(seed)
        self.min_videos = int(min_videos)
        self.class_names = list(class_names) if class_names is not None else None

        classes, counts = np.unique(self.labels, return_counts=True)
        self.videos_per_class = {int(c): np.flatnonzero(self.labels == c) for c in classes}
        eligible = counts >= self.min_videos
        self.excluded_classes = [int(c) for c in classes[~eligible]]
        self.class_ids = classes[eligible].astype(np.int64)  # sorted
        if self.excluded_classes:
            listing = ", ".join(
                f"{self.describe_class(c)}: {len(self.videos_per_class[c])}" for c in self.excluded_classes
            )
            message = (
                f"Excluding {len(self.excluded_classes)} class(es) with fewer than {self.min_videos} videos "
                f"(shot {shot} + queries {query_per_class}): {listing}."
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            logger.warning(message)
        if len(self.class_ids) < self.way:
            listing = ", ".join(
                f"{self.describe_class(int(c))}: {int(n)}" for c, n in zip(classes, counts, strict=True)
            )
            raise ValueError(
                f"Only {len(self.class_ids)} class(es) have at least {self.min_videos} videos, but way={self.way}. "
                f"Videos per class: {listing}. Lower way, shot or query_per_class, or add videos."
            )

    def describe_class(self, label: int) -> str:
        """``label`` with its name when known, for messages."""
        if self.class_names is not None and label < len(self.class_names):
            return f"{label} ({self.class_names[label]!r})"
        return str(label)

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of episode ``index`` (a pure function of ``(seed, index)``)."""
        if index < 0:
            raise IndexError(f"Episode index must be >= 0, got {index}.")
        return np.random.default_rng([self.seed, int(index)])

    def episode(self, index: int) -> Episode:
        """Episode ``index``: N classes in draw order, then K + Q distinct videos of each; orders shuffled."""
        rng = self.rng(index)
        class_ids = rng.choice(self.class_ids, size=self.way, replace=False)
        per_class = self.shot + self.query_per_class
        picks = np.stack([rng.choice(self.videos_per_class[int(c)], size=per_class, replace=False) for c in class_ids])
        episode_labels = np.repeat(np.arange(self.way, dtype=np.int64)[:, None], per_class, axis=1)
        support_order = rng.permutation(self.way * self.shot)
        query_order = rng.permutation(self.way * self.query_per_class)
        return Episode(
            class_ids=class_ids.astype(np.int64),
            support_indices=picks[:, : self.shot].reshape(-1)[support_order],
            support_labels=episode_labels[:, : self.shot].reshape(-1)[support_order],
            query_indices=picks[:, self.shot :].reshape(-1)[query_order],
            query_labels=episode_labels[:, self.shot :].reshape(-1)[query_order],
        )


def _column(dataset: Any, name: str) -> list:
    return list(dataset[name])


class EpisodeDataset(torch.utils.data.Dataset):
    """Decoded episodes over one split of a ``datasets`` split (columns ``video``, ``label``, ``class_name``).

    ``ds[i]`` is episode ``i * world_size + rank`` of the sampler, so ranks never share an episode, and is a dict:

    - ``support_pixel_values`` ``[N*K, T, 3, crop, crop]`` float32, ``support_labels`` ``[N*K]`` int64,
    - ``query_pixel_values`` ``[N*Q, T, 3, crop, crop]``, ``query_labels`` ``[N*Q]``
      (these four are ``MODEL_INPUT_KEYS``, the ``M2DFModel.forward`` arguments),
    - ``class_names``: the N prompt names in episode-label order, ``class_ids`` ``[N]`` split-level labels,
    - ``support_indices`` / ``query_indices``: the dataset rows actually decoded (after any replacement),
    - ``episode_index`` and ``num_decode_failures``: how many drawn videos failed to decode and were replaced
      (sum it over batches to count failures across DataLoader workers; each failure is also logged).

    Augmentation (training frame offsets, crop, flip) uses one ``torch.Generator`` per video slot, seeded from
    ``(seed, episode, slot)``, so it too is independent of workers and of failures elsewhere in the episode.

    Decode failures: in training (``on_decode_error="replace"``, the default when ``training``) the video is
    replaced by another video of the same class not already in the episode, tried in an order fixed by
    ``(seed, episode, slot)``; the failure is logged and counted. At evaluation the default is ``"raise"``: a
    ``VideoDecodeError`` naming the file, since replacing would silently change the benchmark's episodes.

    Use it with ``DataLoader(ds, batch_size=None, num_workers=W)`` (each item is already an episode), or
    ``batch_size=1, collate_fn=collate_episode``.
    """

    def __init__(
        self,
        split_dataset: Any,
        processor: Any,
        way: int,
        shot: int,
        query_per_class: int,
        num_episodes: int,
        seed: int = 0,
        training: bool = False,
        flip: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        min_videos: int | None = None,
        on_decode_error: str | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"Need 0 <= rank < world_size; got rank={rank}, world_size={world_size}.")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
        on_decode_error = on_decode_error or ("replace" if training else "raise")
        if on_decode_error not in ("replace", "raise"):
            raise ValueError(f"on_decode_error must be 'replace' or 'raise', got {on_decode_error!r}.")
        self.dataset = split_dataset
        self.processor = processor
        self.num_episodes = int(num_episodes)
        self.seed = int(seed)
        self.training = bool(training)
        self.flip = flip
        self.rank, self.world_size = int(rank), int(world_size)
        self.on_decode_error = on_decode_error

        labels = _column(split_dataset, "label")
        prompt_names = _column(split_dataset, "class_name")
        self.prompt_names: dict[int, str] = {}
        for label, name in zip(labels, prompt_names, strict=True):
            self.prompt_names.setdefault(int(label), name)
        label_feature = getattr(split_dataset, "features", {}).get("label")
        folder_names = getattr(label_feature, "names", None)
        self.sampler = EpisodeSampler(
            labels, way, shot, query_per_class, seed=seed, min_videos=min_videos, class_names=folder_names
        )
        self._known_bad: set[int] = set()  # rows that failed in this process; skipped (they would fail again)
        self.decode_failures: list[tuple[int, int, str]] = []  # (episode, row, error) seen by this process

    def __len__(self) -> int:
        return self.num_episodes

    def episode_index(self, i: int) -> int:
        """The sampler episode behind item ``i`` on this rank."""
        return i * self.world_size + self.rank

    def _slot_seed(self, episode_index: int, slot: int) -> int:
        state = np.random.SeedSequence([self.seed, episode_index, slot, 1]).generate_state(2, dtype=np.uint32)
        return (int(state[0]) << 31) ^ int(state[1])

    def _load(self, row: int, generator: torch.Generator) -> torch.Tensor:
        if row in self._known_bad:
            raise VideoDecodeError(f"Video at row {row} failed earlier in this process.")
        video = self.dataset[int(row)]["video"]
        return self.processor.load_clip(video, training=self.training, generator=generator, flip=self.flip)

    def _load_slot(self, episode_index: int, slot: int, row: int, in_episode: set[int]) -> tuple[torch.Tensor, int]:
        """Decode ``row`` for ``slot``; on failure (training) try same-class replacements -> (clip, row used).

        Replacements are tried in an order fixed by ``(seed, episode, slot)``, skipping rows already in the
        episode; rows known to be broken are skipped without retrying, which gives the same result as retrying
        them, so the outcome depends only on which files are broken, not on what this process saw before.
        """
        label = int(self.sampler.labels[row])
        candidates = None
        while True:
            generator = torch.Generator().manual_seed(self._slot_seed(episode_index, slot))
            try:
                return self._load(row, generator), row
            except VideoDecodeError as err:
                if row not in self._known_bad:
                    self._known_bad.add(row)
                    self.decode_failures.append((episode_index, row, str(err)))
                if self.on_decode_error == "raise":
                    raise
                if candidates is None:
                    pool = self.sampler.videos_per_class[label]
                    order = np.random.default_rng([self.seed, episode_index, slot, 2]).permutation(pool)
                    candidates = [int(r) for r in order if int(r) not in in_episode]
                candidates = [r for r in candidates if r not in self._known_bad]
                if not candidates:
                    raise RuntimeError(
                        f"Episode {episode_index}: no decodable replacement left for class "
                        f"{self.sampler.describe_class(label)}; last error: {err}"
                    ) from err
                logger.warning(
                    "Episode %d: replacing row %d by row %d of the same class after a decode failure: %s",
                    episode_index, row, candidates[0], err,
                )
                in_episode.discard(row)
                row = candidates.pop(0)
                in_episode.add(row)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"Episode item {i} out of range for {self.num_episodes} episodes.")
        index = self.episode_index(i)
        episode = self.sampler.episode(index)
        rows = np.concatenate([episode.support_indices, episode.query_indices]).tolist()
        in_episode = set(rows)
        clips, used = [], []
        for slot, row in enumerate(rows):
            clip, row = self._load_slot(index, slot, row, in_episode)
            clips.append(clip)
            used.append(row)
        num_support = len(episode.support_indices)
        return {
            "support_pixel_values": torch.stack(clips[:num_support]),
            "support_labels": torch.from_numpy(episode.support_labels),
            "query_pixel_values": torch.stack(clips[num_support:]),
            "query_labels": torch.from_numpy(episode.query_labels),
            "class_names": [self.prompt_names[int(c)] for c in episode.class_ids],
            "class_ids": torch.from_numpy(episode.class_ids),
            "support_indices": torch.tensor(used[:num_support], dtype=torch.int64),
            "query_indices": torch.tensor(used[num_support:], dtype=torch.int64),
            "episode_index": index,
            "num_decode_failures": sum(u != r for u, r in zip(used, rows, strict=True)),
        }


def collate_episode(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for ``DataLoader(batch_size=1)``: an episode is already a batch, so return it unchanged."""
    if len(items) != 1:
        raise ValueError(f"An episode is a batch already; use batch_size=1 or None, got {len(items)} items.")
    return items[0]


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ``M2DFModel.forward`` keyword arguments of an episode (drops names, ids and bookkeeping)."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS}


__all__ = ["Episode", "EpisodeDataset", "EpisodeSampler", "MODEL_INPUT_KEYS", "collate_episode", "model_inputs"]
