"""Hugging Face datasets from raw video folders plus few-shot split lists.

``build_dataset_dict`` turns a video root (as users download it) and the train/val/test split lists of a
few-shot benchmark into a ``datasets.DatasetDict`` with the columns

* ``video``: ``datasets.Video(decode=False)``, rows ``{"path": ..., "bytes": None}`` (or bytes once embedded),
* ``label``: ``ClassLabel`` whose names are the split's **sorted** prompt names (label ``i`` is ``names[i]``),
* ``class_name``: the human-readable name used in the text prompt (``"a photo of {}"``),
* ``video_id``: the id of the split line, as written there,
* ``num_frames``: the number of frames decord reports.

Every listed video is checked (it exists, decord opens it, it has at least one frame, and its first and last
frames decode). Missing and undecodable videos are reported with their paths and excluded; nothing is
dropped silently. The five benchmarks of the paper are described in ``BENCHMARKS``; the thin command-line
scripts in ``dataset_scripts/`` call ``run_benchmark_cli``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import datasets
from datasets.table import embed_table_storage
from tqdm.auto import tqdm

from .processing_m2df import VideoDecodeError, VideoSource

SPLITS = ("train", "val", "test")
LAYOUTS = ("class_folders", "flat", "auto")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".mpeg", ".mpg", ".m4v")


# --------------------------------------------------------------------------------------------------
# Class names
# --------------------------------------------------------------------------------------------------


def prompt_name(raw: str) -> str:
    """Human-readable class name for the text prompt.

    Underscores become spaces, SSv2's placeholder brackets are dropped (keeping the word inside), and runs of
    whitespace collapse: ``"draw_sword" -> "draw sword"``, ``"hurling_(sport)" -> "hurling (sport)"``,
    ``"Pouring [something] into [something]" -> "Pouring something into something"``. The bracket rule is
    the one SSv2's own labels file and the CMN split lists already follow, so all three SSv2 sources agree.
    """
    name = raw.replace("_", " ").replace("[", "").replace("]", "")
    return " ".join(name.split())


def split_camel_case(name: str) -> str:
    """``"ApplyEyeMakeup" -> "Apply Eye Makeup"``, ``"YoYo" -> "Yo Yo"`` (UCF101's class folder names)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)


def _folder_key(name: str) -> str:
    """Key under which a class folder matches a split's class (``air_drumming`` == ``air drumming``)."""
    return " ".join(name.replace("_", " ").split()).lower()


def load_ssv2_labels(labels_json: str | os.PathLike) -> dict[str, str]:
    """Map SSv2's numeric class id (as a string) to its prompt name, from ``something-something-v2-labels.json``.

    The file maps a template to an id string, e.g. ``{"Approaching something with your camera": "0", ...}``.
    The official release writes the templates without brackets; copies that keep them
    (``"Pouring [something] into [something]"``) are accepted and give the same names.
    """
    with open(labels_json, encoding="utf-8") as f:
        template_to_id = json.load(f)
    if not isinstance(template_to_id, dict) or not template_to_id:
        raise ValueError(f"{labels_json}: expected a JSON object mapping template -> class id, got {type(template_to_id).__name__}")
    id_to_name: dict[str, str] = {}
    for template, class_id in template_to_id.items():
        key = str(class_id).strip()
        if not key.isdigit():
            raise ValueError(f"{labels_json}: class id {class_id!r} of {template!r} is not a number")
        if key in id_to_name:
            raise ValueError(f"{labels_json}: class id {key} is used twice ({id_to_name[key]!r}, {template!r})")
        id_to_name[str(int(key))] = prompt_name(template)
    return id_to_name


# --------------------------------------------------------------------------------------------------
# Split lists and their checksums
# --------------------------------------------------------------------------------------------------


def parse_split_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a split list: one ``class/video_id`` per line -> ``[(class, video_id), ...]`` in file order.

    The class is everything before the **last** ``/`` (Kinetics class names contain spaces and brackets, never
    a slash). Blank lines and surrounding whitespace are ignored; a line without a class raises.
    """
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            class_key, sep, video_id = line.rpartition("/")
            if not sep or not class_key.strip() or not video_id.strip():
                raise ValueError(f"{path}, line {line_no}: expected 'class/video_id', got {line!r}")
            entries.append((class_key.strip(), video_id.strip()))
    if not entries:
        raise ValueError(f"split file {path} lists no videos")
    return entries


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """A canonical split list: where it is published and what it must hash to."""

    name: str  # path under a splits folder, e.g. "ucf_ARN/trainlist03.txt"
    sha256: str
    url: str
    num_lines: int


# Checksums were computed from the copies in the project's shared ``splits/`` folder (the CLIP-MDMF release's
# lists). The URLs point to public repositories whose stored copy has exactly the same byte size (checked
# through a code index, not downloaded: this machine has no network); see docs/datasets.md.
_TRX = "https://raw.githubusercontent.com/tobyperrett/trx/c5c23ec0bda1e47a5ce7f4f58a09e6fbee39dc86/splits/"
_TSA = "https://raw.githubusercontent.com/cofly2014/TSA-MLT/53ae04a3fe6333e5e70cad75165b7a25d9c940ee/splits/"

SPLIT_SOURCES: dict[str, dict[str, SplitSource]] = {
    "hmdb51": {
        "train": SplitSource("hmdb_ARN/trainlist03.txt", "2524450b6d7b18775411361fbc366c30345d83516a2d6eec12b6af04c884ec88", _TRX + "hmdb_ARN/trainlist03.txt", 4280),
        "val": SplitSource("hmdb_ARN/vallist03.txt", "85458cf86f85354b411080f6aea3157c5831b1a3bf40fed24e4a2c7a17f8027c", _TRX + "hmdb_ARN/vallist03.txt", 1194),
        "test": SplitSource("hmdb_ARN/testlist03.txt", "e2ce039f857287cb943a00d27ac6d2559a434e7bde5722d350c269253160d388", _TRX + "hmdb_ARN/testlist03.txt", 1292),
    },
    "ucf101": {
        "train": SplitSource("ucf_ARN/trainlist03.txt", "5513fc00bdba74ae84ee721fc1cc2bae0aa2d4fb7883b9b6f90387ca1a54ddb8", _TRX + "ucf_ARN/trainlist03.txt", 9154),
        "val": SplitSource("ucf_ARN/vallist03.txt", "5482ce6d2f2db2568a8cd41158ab5a406fad36fcc9940c1811573937ad6bfc4f", _TRX + "ucf_ARN/vallist03.txt", 1421),
        "test": SplitSource("ucf_ARN/testlist03.txt", "0887937010eee99ae3baf3178227ac35daebf6a35431b2df051fcf682b48bc31", _TRX + "ucf_ARN/testlist03.txt", 2745),
    },
    "kinetics100": {
        "train": SplitSource("kinetics_CMN/trainlist03.txt", "3c36c9a96c66dc314a66617971c5ae58b10f368521d3ceeeb7c081d792da9c52", _TSA + "kinetics_CMN/trainlist03.txt", 6574),
        "val": SplitSource("kinetics_CMN/vallist03.txt", "e3144200327ce31bc5be0e1efb1107c6c7f2912c95eb2457095374b2c22bf74a", _TRX + "kinetics_CMN/vallist03.txt", 1200),
        # The canonical 24 x 100 test list. The release calls it testlist03_bb.txt; TSA-MLT (same author)
        # publishes it as testlist03.txt. The release's own testlist03.txt (41 raw class spellings, 2,461
        # lines, 100-108 per class) is NOT the CMN test split.
        "test": SplitSource("kinetics_CMN/testlist03_bb.txt", "5f79c36128361ac79eb2595da463603f8b765fb827e1ba92be675288b8dd3fa8", _TSA + "kinetics_CMN/testlist03.txt", 2400),
    },
    "ssv2_small": {
        "train": SplitSource("ssv2_CMN/trainlist03.txt", "fd15c2eff0065ef3e70a3b4f364b9d7e1c1d2581ce73d22b83d0e4c91e799fb1", _TRX + "ssv2_CMN/trainlist03.txt", 6400),
        "val": SplitSource("ssv2_CMN/vallist03.txt", "aa280e1ece78dc248ae3bda9668bbc549d4837a8dc1e1699f13525d32c1ece43", _TRX + "ssv2_CMN/vallist03.txt", 1200),
        "test": SplitSource("ssv2_CMN/testlist03.txt", "4e8b9ae7446331c47ece4c342cfe4f67896b717f4dea92ffd7659e72baeeddd6", _TRX + "ssv2_CMN/testlist03.txt", 2400),
    },
    "ssv2_full": {
        "train": SplitSource("ssv2_OTAM/trainlist03.txt", "7d3659cb407b2ae96d4e6846f660c5410d2eef23f7a884f1b0078b74cd0c88f8", _TSA + "ssv2_OTAM/trainlist03.txt", 67013),
        "val": SplitSource("ssv2_OTAM/vallist03.txt", "d069bcf031f5dd6fd8b645731489fc5bff982c1e2b8e57871403a9c9db6f22ff", _TSA + "ssv2_OTAM/vallist03.txt", 1926),
        "test": SplitSource("ssv2_OTAM/testlist03.txt", "c3aa312dd15fc279524f7d5dc60f1aea6d69efc5697b7f35c8621dca1c59163b", _TSA + "ssv2_OTAM/testlist03.txt", 2857),
    },
}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, expected_sha256: str) -> None:
    """Raise ``ValueError`` naming the file and both digests if ``path`` does not hash to ``expected_sha256``."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ValueError(
            f"checksum mismatch for split file {path}: sha256 {actual}, expected {expected_sha256}. "
            "It is not the canonical split list: fetch it again (--download), or pass --skip-checksum if you "
            "mean to build from your own list (results are then not comparable with the paper)."
        )


def _default_cache_dir() -> Path:
    base = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(base) / "clip-m2df" / "splits"


def _fetch_url(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URLs only)
        return response.read()


def download_split_file(
    source: SplitSource,
    cache_dir: str | os.PathLike | None = None,
    fetch: Callable[[str], bytes] = _fetch_url,
) -> Path:
    """Download ``source`` into ``cache_dir`` (once) and verify its sha256; a mismatch raises and keeps nothing."""
    target = Path(cache_dir or _default_cache_dir()) / source.name
    if target.exists() and sha256_of(target) == source.sha256:
        return target
    data = fetch(source.url)
    actual = hashlib.sha256(data).hexdigest()
    if actual != source.sha256:
        raise ValueError(
            f"checksum mismatch for {source.url}: sha256 {actual}, expected {source.sha256}. "
            "The published list changed or the download is incomplete; pass the split files as local paths."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def resolve_split_files(
    benchmark: str,
    split_files: Mapping[str, str | os.PathLike] | None = None,
    download: bool = False,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
    fetch: Callable[[str], bytes] = _fetch_url,
) -> dict[str, Path]:
    """Local paths of the benchmark's train/val/test lists, given locally or downloaded, checked by sha256."""
    sources = SPLIT_SOURCES[benchmark]
    split_files = dict(split_files or {})
    resolved = {}
    for split in SPLITS:
        if split_files.get(split):
            path = Path(split_files[split])
            if not path.is_file():
                raise ValueError(f"{split} split file {path} does not exist")
            if verify:
                verify_checksum(path, sources[split].sha256)
        elif download:
            path = download_split_file(sources[split], cache_dir=cache_dir, fetch=fetch)
        else:
            raise ValueError(f"no {split} split file for {benchmark}: pass --{split}-list PATH or --download")
        resolved[split] = path
    return resolved


# --------------------------------------------------------------------------------------------------
# Finding and checking videos
# --------------------------------------------------------------------------------------------------


def index_videos(video_root: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> dict[str, list[str]]:
    """Map a video's stem to its paths relative to ``video_root`` (files in the root and one folder down)."""
    extensions = tuple(e.lower() for e in extensions)
    index: dict[str, list[str]] = {}

    def add(entry: os.DirEntry, folder: str) -> None:
        lower = entry.name.lower()
        for ext in extensions:
            if lower.endswith(ext):
                stem = entry.name[: -len(ext)]
                index.setdefault(stem, []).append(os.path.join(folder, entry.name) if folder else entry.name)
                return

    with os.scandir(video_root) as top:
        for entry in top:
            if entry.is_dir():
                with os.scandir(entry.path) as sub:
                    for inner in sub:
                        if inner.is_file():
                            add(inner, entry.name)
            elif entry.is_file():
                add(entry, "")
    return index


def _choose(candidates: list[str], class_key: str, layout: str, extensions: Sequence[str]) -> str | None:
    def folder(rel: str) -> str:
        return os.path.dirname(rel)

    in_class = [c for c in candidates if folder(c) and _folder_key(folder(c)) == _folder_key(class_key)]
    at_root = [c for c in candidates if not folder(c)]
    if layout == "class_folders":
        pool = in_class
    elif layout == "flat":
        pool = at_root
    else:
        pool = in_class or at_root
    if not pool:
        return None
    rank = {ext.lower(): i for i, ext in enumerate(extensions)}
    return min(pool, key=lambda c: rank.get(os.path.splitext(c)[1].lower(), len(rank)))


def probe_video(path: str | os.PathLike) -> tuple[int, str | None]:
    """``(num_frames, None)`` for a usable video, ``(0, reason)`` otherwise.

    Usable means: decord opens it, reports at least one frame, and decodes the first and the last frame (a
    truncated file often opens but fails on its last frames). Decoding goes through ``processing_m2df``, the
    same code that reads the videos in training.
    """
    try:
        if os.path.getsize(path) == 0:
            return 0, "zero-byte file"
    except OSError as error:
        return 0, f"cannot stat ({error})"
    try:
        source = VideoSource(path)
    except VideoDecodeError as error:
        return 0, f"not a readable video ({_short(error)})"
    num_frames = len(source)
    for index in sorted({0, num_frames - 1}):
        try:
            source.get_frames([index])
        except VideoDecodeError as error:
            return 0, f"frame {index} of {num_frames} cannot be decoded ({_short(error)})"
    return num_frames, None


def _short(error: BaseException) -> str:
    """First line of an error, without decord's ``[hh:mm:ss] /src/file.cc:123:`` prefixes (stable reports)."""
    lines = str(error).strip().splitlines()
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", lines[0]) if lines else type(error).__name__
    return text[:300]


def _probe_all(paths: list[str], num_proc: int | None, desc: str) -> list[tuple[int, str | None]]:
    if num_proc and num_proc > 1 and len(paths) > 1:
        with multiprocessing.get_context("fork").Pool(num_proc) as pool:
            return list(tqdm(pool.imap(probe_video, paths, chunksize=8), total=len(paths), desc=desc))
    return [probe_video(p) for p in tqdm(paths, desc=desc)]


def transcode_to_mp4(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Re-encode ``src`` to an H.264 (or MPEG-4 Part 2) ``.mp4`` that decord reads, with PyAV.

    Used for files decord cannot decode (a known problem with some SSv2 ``.webm``). Frame rate and frame
    count are kept; an odd width or height loses its last pixel column/row (yuv420p needs even sizes).
    """
    try:
        import av
    except ImportError as error:
        raise ImportError("--transcode needs PyAV: pip install av") from error
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part.mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    written = 0
    with av.open(str(src)) as source:
        in_stream = source.streams.video[0]
        rate = in_stream.average_rate or in_stream.guessed_rate or 12
        with av.open(str(tmp), mode="w", format="mp4") as target:
            out_stream = target.add_stream(codec, rate=max(1, round(float(rate))))
            out_stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                out_stream.options = {"crf": "18", "preset": "veryfast"}
            else:
                out_stream.bit_rate = 4_000_000
            for frame in source.decode(in_stream):
                rgb = frame.to_ndarray(format="rgb24")
                height, width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                if written == 0:
                    out_stream.height, out_stream.width = height, width
                image = av.VideoFrame.from_ndarray(rgb[:height, :width].copy(), format="rgb24")
                for packet in out_stream.encode(image):
                    target.mux(packet)
                written += 1
            for packet in out_stream.encode():
                target.mux(packet)
    if written == 0:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{src}: PyAV decoded no frame, nothing to transcode")
    os.replace(tmp, dst)
    return str(dst)


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitReport:
    listed: int = 0
    found: int = 0
    kept: int = 0
    num_classes: int = 0
    missing: list[dict] = dataclasses.field(default_factory=list)  # {"class", "video_id", "expected"}
    undecodable: list[dict] = dataclasses.field(default_factory=list)  # {"path", "reason"}
    duplicates: list[dict] = dataclasses.field(default_factory=list)  # {"class", "video_id"} repeated lines
    transcoded: list[dict] = dataclasses.field(default_factory=list)  # {"source", "path"}

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["num_missing"] = len(self.missing)
        data["num_undecodable"] = len(self.undecodable)
        data["num_duplicates"] = len(self.duplicates)
        data["num_transcoded"] = len(self.transcoded)
        return data


@dataclasses.dataclass
class BuildReport:
    video_root: str
    layout: str
    splits: dict[str, SplitReport] = dataclasses.field(default_factory=dict)
    split_files: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)  # protocol problems across splits

    def to_dict(self) -> dict:
        return {
            "video_root": self.video_root,
            "layout": self.layout,
            "split_files": self.split_files,
            "splits": {name: report.to_dict() for name, report in self.splits.items()},
            "warnings": self.warnings,
        }

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def summary(self, max_paths: int = 20) -> str:
        lines = [f"video root: {self.video_root} (layout: {self.layout})"]
        for name, r in self.splits.items():
            lines.append(
                f"  {name:5s}: listed {r.listed}, found {r.found}, missing {len(r.missing)}, "
                f"undecodable {len(r.undecodable)}, duplicate lines {len(r.duplicates)}, "
                f"transcoded {len(r.transcoded)} -> kept {r.kept} videos in {r.num_classes} classes"
            )
            for item in r.missing[:max_paths]:
                lines.append(f"         missing: {item['expected']}")
            for item in r.undecodable[:max_paths]:
                lines.append(f"         undecodable: {item['path']}: {item['reason']}")
            hidden = max(0, len(r.missing) - max_paths) + max(0, len(r.undecodable) - max_paths)
            if hidden:
                lines.append(f"         ... and {hidden} more (see the JSON report)")
        lines += [f"  warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def dataset_features(class_names: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {
            "video": datasets.Video(decode=False),
            "label": datasets.ClassLabel(names=list(class_names)),
            "class_name": datasets.Value("string"),
            "video_id": datasets.Value("string"),
            "num_frames": datasets.Value("int32"),
        }
    )


def split_dataset(videos, class_names, video_ids, num_frames) -> datasets.Dataset:
    """One split with the contract's columns; ``label`` indexes the sorted distinct ``class_names``."""
    names = sorted(set(class_names))
    label_of = {name: i for i, name in enumerate(names)}
    columns = {
        "video": list(videos),
        "label": [label_of[name] for name in class_names],
        "class_name": list(class_names),
        "video_id": list(video_ids),
        "num_frames": list(num_frames),
    }
    return datasets.Dataset.from_dict(columns, features=dataset_features(names))


def build_dataset_dict(
    video_root: str | os.PathLike,
    split_files: Mapping[str, str | os.PathLike],
    layout: str = "auto",
    class_names: Mapping[str, str] | Callable[[str], str] | None = None,
    num_proc: int | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    video_id_aliases: Callable[[str], Sequence[str]] | None = None,
    transcode_dir: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
    verbose: bool = True,
    return_report: bool = False,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, BuildReport]:
    """Build ``{split: Dataset}`` from a video folder and split lists, checking every video.

    Args:
        video_root: folder holding the videos, either in class sub-folders or flat.
        split_files: ``{"train": path, "val": path, "test": path}`` (any subset), lines ``class/video_id``.
        layout: ``"class_folders"`` (``root/<class>/<video_id>.<ext>``; a folder spelled with ``_`` or spaces
            matches), ``"flat"`` (``root/<video_id>.<ext>``) or ``"auto"`` (class folder first, then flat).
        class_names: split-file class -> prompt name, as a dict or a function. Default ``prompt_name``.
            A class missing from a dict raises ``ValueError`` (e.g. an SSv2 id absent from the labels file).
        num_proc: processes for the video check (default: one).
        extensions: file extensions to look for, in order of preference when a stem has several.
        video_id_aliases: other stems to try for an id that has no file (e.g. a bare YouTube id).
        transcode_dir: if given, videos decord cannot read are re-encoded with PyAV to
            ``transcode_dir/<relative path>.mp4`` and used when the copy decodes.
        report_path: where to write the JSON report.
        verbose: print the report's summary.
        return_report: return ``(dataset_dict, BuildReport)`` instead of the dataset dict alone.

    Each split's ``label`` is a ``ClassLabel`` over the sorted prompt names of the classes it keeps. Split-file
    classes that share a prompt name (Kinetics lists ``air drumming`` and ``air_drumming``) are one class.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(video_root).absolute()  # rows keep absolute paths, usable from any working directory
    if not root.is_dir():
        raise ValueError(f"video root {root} is not a folder")
    unknown = sorted(set(split_files) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split names {unknown}; expected a subset of {SPLITS}")
    if class_names is None:
        name_of: Callable[[str], str] = prompt_name
    elif callable(class_names):
        name_of = class_names
    else:
        mapping = dict(class_names)

        def name_of(key: str) -> str:
            return mapping[key]

    index = index_videos(root, extensions)
    report = BuildReport(video_root=str(root), layout=layout)
    built = {}
    for split, split_path in split_files.items():
        entries = parse_split_file(split_path)
        report.split_files[split] = str(split_path)
        split_report = SplitReport(listed=len(entries))
        report.splits[split] = split_report

        names = {}
        for class_key in dict.fromkeys(key for key, _ in entries):
            try:
                names[class_key] = name_of(class_key)
            except KeyError:
                raise ValueError(
                    f"{split_path}: class {class_key!r} has no name in the class mapping "
                    "(for SSv2-Full: is it an id of something-something-v2-labels.json?)"
                ) from None

        rows, seen = [], set()
        for class_key, video_id in entries:
            if (names[class_key], video_id) in seen:
                split_report.duplicates.append({"class": class_key, "video_id": video_id})
                continue
            seen.add((names[class_key], video_id))
            stems = [video_id, *(video_id_aliases(video_id) if video_id_aliases else [])]
            rel = None
            for stem in stems:
                rel = _choose(index.get(stem, []), class_key, layout, extensions)
                if rel is not None:
                    break
            if rel is None:
                expected = root / (video_id if layout == "flat" else os.path.join(class_key, video_id))
                split_report.missing.append({"class": class_key, "video_id": video_id, "expected": f"{expected}.*"})
                continue
            rows.append({"class_key": class_key, "video_id": video_id, "path": str(root / rel), "rel": rel})
        split_report.found = len(rows)

        results = _probe_all([r["path"] for r in rows], num_proc, desc=f"checking {split} videos")
        failed = [i for i, (_, reason) in enumerate(results) if reason not in (None, "zero-byte file")]
        if transcode_dir is not None and failed:  # SSv2: possibly thousands of .webm files, one by one
            for i in tqdm(failed, desc=f"transcoding {split} videos"):
                row, reason = rows[i], results[i][1]
                copy = Path(transcode_dir) / (row["rel"] + ".mp4")
                try:
                    transcode_to_mp4(row["path"], copy)
                    num_frames, copy_reason = probe_video(copy)
                except Exception as error:  # PyAV cannot read it either
                    copy_reason = _short(error)
                if copy_reason is None:
                    split_report.transcoded.append({"source": row["path"], "path": str(copy)})
                    row["path"], results[i] = str(copy), (num_frames, None)
                else:
                    results[i] = (0, f"{reason}; transcoding failed: {copy_reason}")
        kept = []
        for row, (num_frames, reason) in zip(rows, results):
            if reason is not None:
                split_report.undecodable.append({"path": row["path"], "reason": reason})
                continue
            kept.append((row, num_frames))

        built[split] = split_dataset(
            [row["path"] for row, _ in kept], [names[row["class_key"]] for row, _ in kept],
            [row["video_id"] for row, _ in kept], [n for _, n in kept],
        )
        split_report.kept, split_report.num_classes = len(kept), len(built[split].features["label"].names)

    report.warnings = _cross_split_warnings(built)
    if report_path is not None:
        report.save(report_path)
    if verbose:
        print(report.summary())
    dataset_dict = datasets.DatasetDict(built)
    return (dataset_dict, report) if return_report else dataset_dict


def _cross_split_warnings(built: Mapping[str, datasets.Dataset]) -> list[str]:
    """Few-shot splits must not share classes or videos; say so (with names) when they do."""
    warnings = []
    splits = list(built)
    for i, first in enumerate(splits):
        for second in splits[i + 1 :]:
            classes = sorted(set(built[first]["class_name"]) & set(built[second]["class_name"]))
            if classes:
                warnings.append(f"classes in both {first} and {second}: {classes[:10]}" + (" ..." if len(classes) > 10 else ""))
            videos = sorted(set(built[first]["video_id"]) & set(built[second]["video_id"]))
            if videos:
                warnings.append(f"{len(videos)} videos in both {first} and {second}, e.g. {videos[:5]}")
    return warnings


# --------------------------------------------------------------------------------------------------
# Saving, parquet with embedded bytes, the Hub
# --------------------------------------------------------------------------------------------------


def embed_videos(dataset: datasets.Dataset, batch_size: int = 64) -> datasets.Dataset:
    """Copy every video file's bytes into the table (``{"bytes": ..., "path": basename}``)."""
    return dataset.with_format("arrow").map(embed_table_storage, batched=True, batch_size=batch_size).with_format(None)


def write_parquet(
    dataset_dict: datasets.DatasetDict, out_dir: str | os.PathLike, max_shard_bytes: int = 500 * 2**20
) -> dict[str, list[str]]:
    """Write ``out_dir/data/<split>-XXXXX-of-NNNNN.parquet`` with the video bytes embedded (offline).

    Shards hold about ``max_shard_bytes`` of video each; this is the Hub's layout, so the folder can be
    uploaded as is and reloaded with ``load_parquet_dataset_dict``.
    """
    data_dir = Path(out_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, dataset in dataset_dict.items():
        videos = dataset.with_format(None)["video"]
        total = sum(len(v["bytes"]) if v["bytes"] is not None else os.path.getsize(v["path"]) for v in videos)
        num_shards = max(1, min(len(dataset), -(-total // max_shard_bytes)))
        paths = []
        for shard_index in range(num_shards):
            shard = dataset.shard(num_shards, shard_index, contiguous=True)
            path = data_dir / f"{split}-{shard_index:05d}-of-{num_shards:05d}.parquet"
            embed_videos(shard).to_parquet(str(path))
            paths.append(str(path))
        written[split] = paths
    return written


def load_parquet_dataset_dict(folder: str | os.PathLike) -> datasets.DatasetDict:
    """Reload what ``write_parquet`` wrote; the ``Video`` and ``ClassLabel`` features come back."""
    data_dir = Path(folder) / "data"
    data_files = {}
    for split in SPLITS:
        files = sorted(str(p) for p in data_dir.glob(f"{split}-*.parquet"))
        if files:
            data_files[split] = files
    if not data_files:
        raise ValueError(f"no parquet shards under {data_dir}")
    return datasets.load_dataset("parquet", data_files=data_files)


def save_dataset_dict(dataset_dict: datasets.DatasetDict, out_dir: str | os.PathLike) -> None:
    """``save_to_disk``. datasets 5.x copies the video bytes in, so the folder is self-contained."""
    dataset_dict.save_to_disk(str(out_dir))


def dataset_card(dataset_dict: datasets.DatasetDict, pretty_name: str, report: BuildReport | None = None) -> str:
    """A README.md for the dataset repo: configs pointing to the parquet shards, classes, counts."""
    lines = [
        "---",
        f"pretty_name: {pretty_name}",
        "task_categories:",
        "- video-classification",
        "tags:",
        "- few-shot",
        "- action-recognition",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for split in dataset_dict:
        lines += [f"  - split: {split}", f"    path: data/{split}-*"]
    lines += ["---", "", f"# {pretty_name}", "", "Built with clip-m2df's dataset builders (`dataset_scripts/`).", ""]
    lines += ["| split | videos | classes |", "|---|---|---|"]
    for split, dataset in dataset_dict.items():
        lines.append(f"| {split} | {len(dataset)} | {len(dataset.features['label'].names)} |")
    for split, dataset in dataset_dict.items():
        lines += ["", f"{split} classes (label order): " + ", ".join(dataset.features["label"].names)]
    if report is not None:
        lines += ["", "Build report:", "", "```", report.summary(max_paths=0), "```"]
    return "\n".join(lines) + "\n"


def push_dataset_to_hub(
    dataset_dict: datasets.DatasetDict,
    repo_id: str,
    pretty_name: str | None = None,
    report: BuildReport | None = None,
    private: bool = False,
    api=None,
    max_shard_bytes: int = 500 * 2**20,
) -> str:
    """Upload the dataset (parquet shards with embedded videos + a card) to a Hub dataset repo.

    ``api`` is an ``huggingface_hub.HfApi`` (a fresh one by default); pass a stand-in to test offline.
    The shards are written locally first, so the upload is one ``upload_folder`` call.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    with tempfile.TemporaryDirectory(prefix="m2df_push_") as folder:
        write_parquet(dataset_dict, folder, max_shard_bytes=max_shard_bytes)
        Path(folder, "README.md").write_text(dataset_card(dataset_dict, pretty_name or repo_id, report), encoding="utf-8")
        if report is not None:
            report.save(Path(folder, "build_report.json"))
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder, commit_message="Add dataset built by clip-m2df")
    return repo_id


# --------------------------------------------------------------------------------------------------
# The five benchmarks
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    pretty_name: str
    layout: str
    extensions: tuple[str, ...]
    download_help: str
    needs_labels_json: bool = False

    def class_names(self, labels_json: str | os.PathLike | None, split_files: Mapping[str, Path], camel_case: bool = True):
        """The class mapping given to ``build_dataset_dict``."""
        if self.needs_labels_json:  # SSv2-Full: numeric class ids, named by the labels file
            if labels_json is None:
                raise ValueError("SSv2-Full split lists use numeric class ids: pass --labels-json something-something-v2-labels.json")
            return load_ssv2_labels(labels_json)
        if self.name == "ssv2_small" and labels_json is not None:
            known = set(load_ssv2_labels(labels_json).values())
            listed = {prompt_name(key) for path in split_files.values() for key, _ in parse_split_file(path)}
            if listed - known:
                raise ValueError(f"SSv2-Small classes not in {labels_json}: {sorted(listed - known)}")
        if self.name == "ucf101" and camel_case:
            return lambda key: prompt_name(split_camel_case(key))
        return None

    def id_aliases(self):
        if self.name == "kinetics100":
            # Some Kinetics downloads name clips by the bare 11-character YouTube id.
            return lambda video_id: [video_id[:11]] if len(video_id) > 11 else []
        return None


BENCHMARKS: dict[str, Benchmark] = {
    "ucf101": Benchmark("ucf101", "UCF101 few-shot (ARN split)", "class_folders", (".avi",), "UCF-101/<Class>/v_<Class>_gXX_cYY.avi"),
    "hmdb51": Benchmark("hmdb51", "HMDB51 few-shot (ARN split)", "class_folders", (".avi",), "hmdb51/<class>/<video>.avi"),
    "kinetics100": Benchmark(
        "kinetics100", "Kinetics-100 few-shot (CMN split)", "auto", (".mp4", ".webm", ".mkv", ".avi"),
        "<root>/<class name>/<ytid>_<start>_<end>.mp4 or <root>/<ytid>_<start>_<end>.mp4",
    ),
    "ssv2_small": Benchmark("ssv2_small", "Something-Something V2 Small few-shot (CMN split)", "flat", (".webm", ".mp4"), "<root>/<id>.webm"),
    "ssv2_full": Benchmark(
        "ssv2_full", "Something-Something V2 Full few-shot (OTAM split)", "flat", (".webm", ".mp4"), "<root>/<id>.webm",
        needs_labels_json=True,
    ),
}


def build_benchmark(
    benchmark: str,
    video_root: str | os.PathLike,
    split_files: Mapping[str, str | os.PathLike] | None = None,
    download: bool = False,
    verify_checksums: bool = True,
    labels_json: str | os.PathLike | None = None,
    num_proc: int | None = None,
    transcode_dir: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
    layout: str | None = None,
    keep_camel_case: bool = False,
    split_cache_dir: str | os.PathLike | None = None,
    fetch: Callable[[str], bytes] = _fetch_url,
    verbose: bool = True,
) -> tuple[datasets.DatasetDict, BuildReport]:
    """``build_dataset_dict`` with one benchmark's layout, split lists, checksums and class naming."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[benchmark]
    paths = resolve_split_files(benchmark, split_files, download=download, verify=verify_checksums, cache_dir=split_cache_dir, fetch=fetch)
    return build_dataset_dict(
        video_root,
        paths,
        layout=layout or spec.layout,
        class_names=spec.class_names(labels_json, paths, camel_case=not keep_camel_case),
        num_proc=num_proc,
        extensions=spec.extensions,
        video_id_aliases=spec.id_aliases(),
        transcode_dir=transcode_dir,
        report_path=report_path,
        verbose=verbose,
        return_report=True,
    )


def run_benchmark_cli(benchmark: str, argv: Sequence[str] | None = None, api=None) -> int:
    """The command line of ``dataset_scripts/build_<benchmark>.py``."""
    spec = BENCHMARKS[benchmark]
    parser = argparse.ArgumentParser(
        prog=f"build_{benchmark}.py",
        description=f"Build {spec.pretty_name} as a Hugging Face dataset from the raw videos ({spec.download_help}).",
    )
    parser.add_argument("video_root", help="folder with the videos as downloaded")
    for split in SPLITS:
        parser.add_argument(f"--{split}-list", help=f"local {split} split file (default: the canonical one, with --download)")
    parser.add_argument("--download", action="store_true", help="download missing split lists from their public source")
    parser.add_argument("--skip-checksum", action="store_true", help="accept local split files that are not the canonical lists")
    if benchmark.startswith("ssv2"):
        parser.add_argument(
            "--labels-json", required=spec.needs_labels_json,
            help="something-something-v2-labels.json (maps class names to SSv2's numeric ids)",
        )
    if benchmark == "ucf101":
        parser.add_argument("--keep-camel-case", action="store_true", help="prompt names as the folders spell them (ApplyEyeMakeup)")
    parser.add_argument("--layout", choices=LAYOUTS, help=f"video layout (default: {spec.layout})")
    parser.add_argument("--output-dir", required=True, help="where to write the dataset and build_report.json")
    parser.add_argument("--format", choices=("disk", "parquet", "both"), default="disk", help="save_to_disk folder, parquet shards with embedded videos, or both")
    parser.add_argument("--transcode", action="store_true", help="re-encode videos decord cannot read to mp4 with PyAV (into OUTPUT_DIR/transcoded)")
    parser.add_argument("--num-proc", type=int, default=None, help="processes for the video check")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset_dict, report = build_benchmark(
        benchmark,
        args.video_root,
        split_files={s: getattr(args, f"{s}_list") for s in SPLITS if getattr(args, f"{s}_list")},
        download=args.download,
        verify_checksums=not args.skip_checksum,
        labels_json=getattr(args, "labels_json", None),
        num_proc=args.num_proc,
        transcode_dir=out / "transcoded" if args.transcode else None,
        report_path=out / "build_report.json",
        layout=args.layout,
        keep_camel_case=getattr(args, "keep_camel_case", False),
    )
    if args.format in ("disk", "both"):
        save_dataset_dict(dataset_dict, out / "dataset")
    if args.format in ("parquet", "both"):
        write_parquet(dataset_dict, out / "parquet")
    if args.push_to_hub:
        push_dataset_to_hub(dataset_dict, args.push_to_hub, pretty_name=spec.pretty_name, report=report, private=args.private, api=api)
    print(f"wrote {out} (report: {out / 'build_report.json'})")
    return 0
