"""Dataset builders: tiny fake trees in each benchmark's on-disk layout, split files in the real formats,
broken videos next to good ones, parquet/Hub round trips, and the real split lists (read, never copied)."""

import collections
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import decord
import numpy as np
import pytest
import torch
from conftest import write_video

from m2df_hf import data

SHARED_SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"


def frames(seed, num_frames=8, size=32):
    return np.random.default_rng(seed).integers(0, 256, size=(num_frames, size, size, 3), dtype=np.uint8)


_WEBM_WRITER = """
import json, sys
import av, numpy as np
for path, codec, num_frames, seed in json.loads(sys.argv[1]):
    rng = np.random.default_rng(seed)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.height = stream.width = 32
        stream.pix_fmt = "yuv420p"
        for frame in rng.integers(0, 256, size=(num_frames, 32, 32, 3), dtype=np.uint8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
"""


def write_webms(specs):
    """Write real .webm files ``[(path, codec, num_frames, seed)]`` (VP9 like SSv2, or AV1).

    In a fresh interpreter: once decord is imported, its bundled FFmpeg makes PyAV's libvpx encoder fail to
    open (``avcodec_open2("libvpx-vp9") returned 22``); decoding and the other encoders are unaffected.
    """
    specs = [(str(p), codec, n, seed) for p, codec, n, seed in specs]
    subprocess.run([sys.executable, "-c", _WEBM_WRITER, json.dumps(specs)], check=True, capture_output=True)


def write_lines(path, lines):
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def add_broken(folder, stem, kind, good_bytes):
    """zero-byte, truncated (30 % of a good file: the index is lost), or a text file renamed to a video."""
    path = Path(folder) / stem
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good_bytes[: int(len(good_bytes) * 0.3)])
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    return str(path)


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def test_prompt_names():
    assert data.prompt_name("draw_sword") == "draw sword"
    assert data.prompt_name("hurling_(sport)") == "hurling (sport)"
    assert data.prompt_name("playing ice_hockey") == "playing ice hockey"
    assert data.prompt_name("Pouring [something] into [something]") == "Pouring something into something"
    assert data.prompt_name("[Something] falling like a rock") == "Something falling like a rock"
    assert (
        data.prompt_name("Putting [something that cannot actually stand upright] upright on the table, so it falls on its side")
        == "Putting something that cannot actually stand upright upright on the table, so it falls on its side"
    )
    assert data.split_camel_case("ApplyEyeMakeup") == "Apply Eye Makeup"
    assert data.split_camel_case("YoYo") == "Yo Yo"
    assert data.split_camel_case("PlayingDaf") == "Playing Daf"


def test_ssv2_labels_with_and_without_brackets(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"Approaching something with your camera": "0", "Pouring something into something": "101"}))
    bracketed = tmp_path / "bracketed.json"
    bracketed.write_text(json.dumps({"Approaching [something] with your camera": "0", "Pouring [something] into [something]": "101"}))
    expected = {"0": "Approaching something with your camera", "101": "Pouring something into something"}
    assert data.load_ssv2_labels(plain) == expected
    assert data.load_ssv2_labels(bracketed) == expected
    duplicate = tmp_path / "dup.json"
    duplicate.write_text(json.dumps({"A": "3", "B": "3"}))
    with pytest.raises(ValueError, match="class id 3 is used twice"):
        data.load_ssv2_labels(duplicate)


def test_split_line_without_class_is_rejected(tmp_path):
    bad = write_lines(tmp_path / "bad.txt", ["walk/v1", "no_slash_here"])
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 'class/video_id'"):
        data.parse_split_file(bad)


# --------------------------------------------------------------------------------------------------
# The real split lists (read from ../shared/splits, never copied into the repo)
# --------------------------------------------------------------------------------------------------

# METHOD.md section 6.5: (classes, lines) per split, after prompt naming (Kinetics spells 64 train classes
# 82 ways), and videos per class where the protocol fixes it.
EXPECTED = {
    "hmdb51": {"train": (31, 4280), "val": (10, 1194), "test": (10, 1292)},
    "ucf101": {"train": (70, 9154), "val": (10, 1421), "test": (21, 2745)},
    "kinetics100": {"train": (64, 6574), "val": (12, 1200), "test": (24, 2400)},
    "ssv2_small": {"train": (64, 6400), "val": (12, 1200), "test": (24, 2400)},
    "ssv2_full": {"train": (64, 67013), "val": (12, 1926), "test": (24, 2857)},
}


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="the shared split lists are not next to the repository")
@pytest.mark.parametrize("benchmark", sorted(EXPECTED))
def test_real_split_lists(benchmark):
    classes_per_split, ids_seen = {}, collections.Counter()
    for split, source in data.SPLIT_SOURCES[benchmark].items():
        path = SHARED_SPLITS / source.name
        data.verify_checksum(path, source.sha256)  # the recorded checksums are those of the real files
        entries = data.parse_split_file(path)
        assert len(entries) == source.num_lines == EXPECTED[benchmark][split][1]
        names = collections.Counter(data.prompt_name(key) for key, _ in entries)
        assert len(names) == EXPECTED[benchmark][split][0]
        if benchmark == "ssv2_full":
            assert all(key.isdigit() and 0 <= int(key) < 174 for key in names)
        if benchmark == "ssv2_small" or (benchmark == "kinetics100" and split != "train"):
            assert set(names.values()) == {100}  # CMN: 100 videos per class
        if benchmark == "kinetics100" and split == "train":
            assert (min(names.values()), max(names.values())) == (100, 108)
        classes_per_split[split] = set(names)
        ids_seen.update(video_id for _, video_id in entries)
    # few-shot protocol: disjoint classes, and no video listed twice anywhere
    assert not classes_per_split["train"] & classes_per_split["val"]
    assert not classes_per_split["train"] & classes_per_split["test"]
    assert not classes_per_split["val"] & classes_per_split["test"]
    assert max(ids_seen.values()) == 1


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="the shared split lists are not next to the repository")
def test_download_uses_the_registered_urls(tmp_path):
    served = {}
    for sources in data.SPLIT_SOURCES.values():
        for source in sources.values():
            served[source.url] = (SHARED_SPLITS / source.name).read_bytes()
    fetched = []

    def fetch(url):
        fetched.append(url)
        return served[url]

    paths = data.resolve_split_files("ssv2_full", download=True, cache_dir=tmp_path, fetch=fetch)
    assert fetched == [data.SPLIT_SOURCES["ssv2_full"][s].url for s in data.SPLITS]
    assert all(url.startswith("https://raw.githubusercontent.com/") for url in served)
    assert paths == {s: tmp_path / "ssv2_OTAM" / f"{s}list03.txt" for s in data.SPLITS}
    assert paths["test"].read_bytes() == (SHARED_SPLITS / "ssv2_OTAM/testlist03.txt").read_bytes()


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="the shared split lists are not next to the repository")
def test_kinetics_testlist03_is_not_the_canonical_test_split():
    entries = data.parse_split_file(SHARED_SPLITS / "kinetics_CMN" / "testlist03.txt")
    per_class = collections.Counter(data.prompt_name(key) for key, _ in entries)
    assert len(entries) == 2461 and len(per_class) == 24 and max(per_class.values()) == 108
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.resolve_split_files(
            "kinetics100",
            {"train": SHARED_SPLITS / "kinetics_CMN/trainlist03.txt", "val": SHARED_SPLITS / "kinetics_CMN/vallist03.txt",
             "test": SHARED_SPLITS / "kinetics_CMN/testlist03.txt"},
        )


# --------------------------------------------------------------------------------------------------
# Checksums and downloads
# --------------------------------------------------------------------------------------------------


def test_download_checks_sha256_and_caches(tmp_path):
    content = b"walk/v1\nrun/v2\n"
    import hashlib

    source = data.SplitSource("toy/trainlist03.txt", hashlib.sha256(content).hexdigest(), "https://example.org/t.txt", 2)
    calls = []

    def fetch(url):
        calls.append(url)
        return content

    path = data.download_split_file(source, cache_dir=tmp_path, fetch=fetch)
    assert path == tmp_path / "toy/trainlist03.txt" and path.read_bytes() == content
    assert data.download_split_file(source, cache_dir=tmp_path, fetch=fetch) == path
    assert calls == ["https://example.org/t.txt"]  # the second call used the verified cached copy

    tampered = data.SplitSource("toy/other.txt", source.sha256, "https://example.org/o.txt", 2)
    with pytest.raises(ValueError, match=r"checksum mismatch for https://example.org/o.txt: sha256 [0-9a-f]{64}, expected"):
        data.download_split_file(tampered, cache_dir=tmp_path, fetch=lambda url: content + b"extra/v3\n")
    assert not (tmp_path / "toy/other.txt").exists()


def test_local_split_checksum_mismatch_names_the_file(tmp_path):
    fake = write_lines(tmp_path / "trainlist03.txt", ["brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"])
    with pytest.raises(ValueError, match=r"checksum mismatch for split file .*trainlist03.txt: sha256 [0-9a-f]{64}, expected 2524450b"):
        data.resolve_split_files("hmdb51", {"train": fake, "val": fake, "test": fake})
    with pytest.raises(ValueError, match="no val split file for hmdb51"):
        data.resolve_split_files("hmdb51", {"train": fake}, verify=False)


# --------------------------------------------------------------------------------------------------
# UCF101: class folders of .avi, broken files next to good ones
# --------------------------------------------------------------------------------------------------


def make_ucf(tmp_path):
    root = tmp_path / "UCF-101"
    lengths = {}
    classes = {"train": ["YoYo", "ApplyEyeMakeup"], "val": ["BlowingCandles"], "test": ["PlayingDaf"]}
    lines = {}
    for split, names in classes.items():
        lines[split] = []
        for c, cls in enumerate(names):
            for g in range(3):
                vid = f"v_{cls}_g{g + 1:02d}_c01"
                n = 6 + g + c
                (root / cls).mkdir(parents=True, exist_ok=True)
                write_video(root / cls / f"{vid}.avi", frames(seed=len(lengths), num_frames=n))
                lengths[vid] = n
                lines[split].append(f"{cls}/{vid}")
    good = (root / "YoYo" / "v_YoYo_g01_c01.avi").read_bytes()
    broken = {
        "zero": add_broken(root / "ApplyEyeMakeup", "v_ApplyEyeMakeup_g04_c01.avi", "zero", good),
        "truncated": add_broken(root / "ApplyEyeMakeup", "v_ApplyEyeMakeup_g05_c01.avi", "truncated", good),
        "text": add_broken(root / "BlowingCandles", "v_BlowingCandles_g04_c01.avi", "text", good),
    }
    lines["train"] += ["ApplyEyeMakeup/v_ApplyEyeMakeup_g04_c01", "ApplyEyeMakeup/v_ApplyEyeMakeup_g05_c01",
                       "YoYo/v_YoYo_g09_c01"]  # the last one is missing
    lines["val"] += ["BlowingCandles/v_BlowingCandles_g04_c01"]
    split_files = {s: write_lines(tmp_path / f"{s}list03.txt", lines[s]) for s in data.SPLITS}
    return root, split_files, lengths, broken


def test_ucf101_reports_and_excludes_broken_videos(tmp_path, capsys):
    root, split_files, lengths, broken = make_ucf(tmp_path)
    dsd, report = data.build_benchmark(
        "ucf101", root, split_files, verify_checksums=False, report_path=tmp_path / "report.json", num_proc=2
    )
    train = report.splits["train"]
    assert (train.listed, train.found, train.kept) == (9, 8, 6)
    assert [m["expected"] for m in train.missing] == [f"{root}/YoYo/v_YoYo_g09_c01.*"]
    assert [u["path"] for u in train.undecodable] == [broken["zero"], broken["truncated"]]
    assert train.undecodable[0]["reason"] == "zero-byte file"
    assert train.undecodable[1]["reason"].startswith("not a readable video")
    val = report.splits["val"]
    assert (val.listed, val.found, val.kept, len(val.missing)) == (4, 4, 3, 0)
    assert [u["path"] for u in val.undecodable] == [broken["text"]]
    assert report.splits["test"].kept == 3 and not report.splits["test"].undecodable

    # sorted ClassLabel of human-readable names; class_name and label agree; frame counts are decord's
    assert dsd["train"].features["label"].names == ["Apply Eye Makeup", "Yo Yo"]
    rows = dsd["train"].to_list()
    assert {r["video_id"] for r in rows} == {f"v_{c}_g0{g}_c01" for c in ("YoYo", "ApplyEyeMakeup") for g in (1, 2, 3)}
    for r in rows:
        assert dsd["train"].features["label"].names[r["label"]] == r["class_name"]
        assert r["num_frames"] == lengths[r["video_id"]] == len(decord.VideoReader(r["video"]["path"]))
        assert r["video"]["bytes"] is None
    assert dsd["test"].features["label"].names == ["Playing Daf"]

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["splits"]["train"]["num_undecodable"] == 2 and saved["splits"]["train"]["num_missing"] == 1
    printed = capsys.readouterr().out
    assert "train: listed 9, found 8, missing 1, undecodable 2" in printed and broken["text"] in printed


# --------------------------------------------------------------------------------------------------
# HMDB51 through the command line: save_to_disk + parquet with embedded bytes
# --------------------------------------------------------------------------------------------------


def test_hmdb51_cli_saves_disk_and_parquet(tmp_path):
    root = tmp_path / "hmdb51"
    ids = {
        "train": {"brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0", "April_09_brush_hair_u_nm_np1_ba_goo_1"],
                  "draw_sword": ["Blade_Of_Fury_-_Scene_1_draw_sword_f_cm_np1_ri_med_3", "x_draw_sword_u_cm_np1_fr_med_0"]},
        "val": {"cartwheel": ["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0", "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8"]},
        "test": {"fencing": ["1899_Hamlet__the_Fencing_Scene_with_Laertes_fencing_f_cm_np2_le_med_0", "f2_fencing_u_cm_np2_le_med_1"]},
    }
    lines = {s: [] for s in ids}
    for s, classes in ids.items():
        for cls, vids in classes.items():
            (root / cls).mkdir(parents=True)
            for i, vid in enumerate(vids):
                write_video(root / cls / f"{vid}.avi", frames(seed=i, num_frames=7))
                lines[s].append(f"{cls}/{vid}")
    args = [str(root), "--output-dir", str(tmp_path / "out"), "--format", "both", "--skip-checksum"]
    for s in data.SPLITS:
        args += [f"--{s}-list", str(write_lines(tmp_path / f"{s}.txt", lines[s]))]
    assert data.run_benchmark_cli("hmdb51", args) == 0

    # save_to_disk (datasets 5.x) and the parquet shards both carry the video bytes
    from_disk = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    reloaded = data.load_parquet_dataset_dict(tmp_path / "out" / "parquet")
    assert from_disk["train"].features["label"].names == ["brush hair", "draw sword"]
    assert reloaded["train"].features == from_disk["train"].features
    assert from_disk["val"][0]["video_id"] == "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0"
    for split in data.SPLITS:
        assert reloaded[split]["video_id"] == from_disk[split]["video_id"]
        for row, saved in zip(reloaded[split], from_disk[split]):
            source = root / row["class_name"].replace(" ", "_") / f"{row['video_id']}.avi"
            assert row["video"]["bytes"] == saved["video"]["bytes"] == source.read_bytes()
            from_bytes = decord.VideoReader(io.BytesIO(row["video"]["bytes"]))
            assert len(from_bytes) == row["num_frames"] == 7
            np.testing.assert_array_equal(from_bytes[6].asnumpy(), decord.VideoReader(str(source))[6].asnumpy())
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert {s: report["splits"][s]["kept"] for s in data.SPLITS} == {"train": 4, "val": 2, "test": 2}


# --------------------------------------------------------------------------------------------------
# Kinetics-100: clips named by YouTube id, flat or in class folders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["class_folders", "flat"])
def test_kinetics100_both_layouts(tmp_path, layout):
    root = tmp_path / "kinetics"
    train = {"air drumming": ["-VtLx-mcPds_000012_000022", "-eGnPDG5Pxs_000053_000063"],
             "hurling (sport)": ["aaaaaaaaaaa_000001_000011", "bbbbbbbbbbb_000002_000012"]}
    files = []
    for cls, vids in train.items():
        for i, vid in enumerate(vids):
            # Class folders as some downloaders spell them (underscores); one clip by its bare YouTube id.
            folder = root / cls.replace(" ", "_") if layout == "class_folders" else root
            folder.mkdir(parents=True, exist_ok=True)
            name = vid[:11] if vid.startswith("bbbb") else vid
            files.append(write_video(folder / f"{name}.mp4", frames(seed=i)))
    # The release's train list spells some classes with underscores: same class, one ClassLabel entry.
    lines = ["air drumming/-VtLx-mcPds_000012_000022", "air_drumming/-eGnPDG5Pxs_000053_000063",
             "hurling (sport)/aaaaaaaaaaa_000001_000011", "hurling_(sport)/bbbbbbbbbbb_000002_000012",
             "air drumming/-VtLx-mcPds_000012_000022"]  # listed twice: reported, kept once
    split_files = {"train": write_lines(tmp_path / "train.txt", lines)}
    dsd, report = data.build_dataset_dict(
        root, split_files, layout="auto", extensions=data.BENCHMARKS["kinetics100"].extensions,
        video_id_aliases=data.BENCHMARKS["kinetics100"].id_aliases(), verbose=False, return_report=True,
    )
    assert dsd["train"].features["label"].names == ["air drumming", "hurling (sport)"]
    assert report.splits["train"].duplicates == [{"class": "air drumming", "video_id": "-VtLx-mcPds_000012_000022"}]
    assert sorted(dsd["train"]["video_id"]) == sorted(v for vids in train.values() for v in vids)
    assert sorted(v["path"] for v in dsd["train"]["video"]) == sorted(files)
    assert dsd["train"]["label"] == [0, 0, 1, 1]


def test_layout_is_enforced(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    write_video(root / "v1.mp4", frames(0))
    split = {"train": write_lines(tmp_path / "t.txt", ["walk/v1"])}
    dsd, report = data.build_dataset_dict(root, split, layout="class_folders", verbose=False, return_report=True)
    assert len(dsd["train"]) == 0 and report.splits["train"].missing[0]["expected"] == f"{root}/walk/v1.*"
    assert len(data.build_dataset_dict(root, split, layout="flat", verbose=False)["train"]) == 1
    assert report.warnings == []
    both = {"train": split["train"], "test": write_lines(tmp_path / "test.txt", ["walk/v1"])}
    _, report = data.build_dataset_dict(root, both, layout="flat", verbose=False, return_report=True)
    assert report.warnings == ["classes in both train and test: ['walk']", "1 videos in both train and test, e.g. ['v1']"]
    with pytest.raises(ValueError, match="layout must be one of"):
        data.build_dataset_dict(root, split, layout="folders")


# --------------------------------------------------------------------------------------------------
# SSv2: flat <id>.webm, labels json, transcoding what decord cannot read
# --------------------------------------------------------------------------------------------------


def test_ssv2_small_with_transcode(tmp_path, capsys):
    root = tmp_path / "20bn-something-something-v2"
    root.mkdir()
    names = {"train": ["Pouring something into something", "Twisting (wringing) something wet until water comes out"],
             "val": ["Something falling like a rock"], "test": ["Approaching something with your camera"]}
    lines, specs, next_id = {s: [] for s in names}, [], 100
    for s, classes in names.items():
        for cls in classes:
            for _ in range(2):
                specs.append((root / f"{next_id}.webm", "libvpx-vp9", 8, next_id))
                lines[s].append(f"{cls}/{next_id}")
                next_id += 1
    # An AV1 .webm: PyAV decodes it, this decord build cannot (the SSv2 .webm problem in miniature).
    specs.append((root / "999.webm", "libsvtav1", 9, 0))
    write_webms(specs)
    lines["test"].append("Approaching something with your camera/999")
    assert data.probe_video(root / "999.webm")[1] is not None

    labels = tmp_path / "something-something-v2-labels.json"
    all_names = [n for ns in names.values() for n in ns]
    labels.write_text(json.dumps({n.replace("something", "[something]"): str(i) for i, n in enumerate(all_names)}))
    split_files = {s: write_lines(tmp_path / f"{s}list03.txt", lines[s]) for s in data.SPLITS}

    dsd, report = data.build_benchmark("ssv2_small", root, split_files, verify_checksums=False, labels_json=labels, verbose=False)
    assert [u["path"] for u in report.splits["test"].undecodable] == [str(root / "999.webm")]
    assert len(dsd["test"]) == 2

    capsys.readouterr()
    dsd, report = data.build_benchmark(
        "ssv2_small", root, split_files, verify_checksums=False, labels_json=labels,
        transcode_dir=tmp_path / "transcoded", verbose=False,
    )
    bars = capsys.readouterr().err
    assert "transcoding test videos" in bars and "1/1" in bars  # the one AV1 file, with a progress bar
    assert "transcoding train videos" not in bars  # nothing to transcode there: no bar
    copy = tmp_path / "transcoded" / "999.webm.mp4"
    assert report.splits["test"].transcoded == [{"source": str(root / "999.webm"), "path": str(copy)}]
    assert not report.splits["test"].undecodable
    row = dsd["test"].to_list()[-1]
    assert (row["video_id"], row["video"]["path"], row["num_frames"]) == ("999", str(copy), 9)
    import av

    with av.open(str(root / "999.webm")) as source:
        original = np.stack([f.to_ndarray(format="rgb24") for f in source.decode(video=0)]).astype(float)
    transcoded = decord.VideoReader(str(copy)).get_batch(list(range(9))).asnumpy().astype(float)
    assert transcoded.shape == original.shape == (9, 32, 32, 3)
    # same frames in the same order, up to H.264 loss (8 grey levels here; a frame shuffle gives ~53)
    assert np.abs(transcoded - original).mean() < 15
    assert dsd["train"].features["label"].names == sorted(names["train"])
    assert dsd["val"][0]["class_name"] == "Something falling like a rock"

    labels.write_text(json.dumps({"Pouring [something] into [something]": "0"}))
    with pytest.raises(ValueError, match=r"SSv2-Small classes not in .*: \['Approaching something"):
        data.build_benchmark("ssv2_small", root, split_files, verify_checksums=False, labels_json=labels, verbose=False)


def test_ssv2_full_maps_numeric_ids_through_labels_json(tmp_path):
    root = tmp_path / "ssv2"
    root.mkdir()
    labels = tmp_path / "something-something-v2-labels.json"
    labels.write_text(json.dumps({"Approaching something with your camera": "0", "Closing something": "5",
                                  "Pouring something into something": "101", "Wiping something off of something": "172"}))
    lines = {"train": ["101/78687", "5/42326", "101/34899"], "val": ["0/188509"], "test": ["172/195025", "172/19977"]}
    write_webms([(root / f"{line.split('/')[1]}.webm", "libvpx-vp9", 5, 0) for ls in lines.values() for line in ls])
    split_files = {s: write_lines(tmp_path / f"{s}list03.txt", ls) for s, ls in lines.items()}
    dsd, _ = data.build_benchmark("ssv2_full", root, split_files, verify_checksums=False, labels_json=labels, verbose=False)
    assert dsd["train"].features["label"].names == ["Closing something", "Pouring something into something"]
    assert dsd["train"]["label"] == [1, 0, 1] and dsd["train"]["video_id"] == ["78687", "42326", "34899"]
    assert dsd["test"]["class_name"] == ["Wiping something off of something"] * 2

    with pytest.raises(ValueError, match="pass --labels-json"):
        data.build_benchmark("ssv2_full", root, split_files, verify_checksums=False, verbose=False)
    bad = {**split_files, "val": write_lines(tmp_path / "bad_val.txt", ["77/188509"])}
    with pytest.raises(ValueError, match=r"bad_val.txt: class '77' has no name in the class mapping"):
        data.build_benchmark("ssv2_full", root, bad, verify_checksums=False, labels_json=labels, verbose=False)


# --------------------------------------------------------------------------------------------------
# The Hub, mocked at the API boundary
# --------------------------------------------------------------------------------------------------


class RecordingApi:
    """Stands in for HfApi: records calls and inspects the folder while it still exists."""

    def __init__(self):
        self.calls, self.uploaded = [], {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        folder = Path(folder_path)
        self.uploaded = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        self.readme = (folder / "README.md").read_text()
        self.reloaded = data.load_parquet_dataset_dict(folder)


def test_push_to_hub_uploads_embedded_parquet_and_card(tmp_path):
    root, split_files, lengths, _ = make_ucf(tmp_path)
    api = RecordingApi()
    args = [str(root), "--output-dir", str(tmp_path / "out"), "--skip-checksum", "--push-to-hub", "me/ucf101-fsl", "--private"]
    for s in data.SPLITS:
        args += [f"--{s}-list", str(split_files[s])]
    assert data.run_benchmark_cli("ucf101", args, api=api) == 0

    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert api.calls[1][2]["repo_type"] == "dataset"
    assert set(api.uploaded) == {"README.md", "build_report.json", "data/train-00000-of-00001.parquet",
                                 "data/val-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"}
    assert "  - split: train\n    path: data/train-*" in api.readme
    assert re.search(r"\| train \| 6 \| 2 \|", api.readme)
    train = api.reloaded["train"]
    assert train.features["label"].names == ["Apply Eye Makeup", "Yo Yo"]
    for row in train:
        assert len(decord.VideoReader(io.BytesIO(row["video"]["bytes"]))) == lengths[row["video_id"]]


def test_parquet_shards_split_by_size(tmp_path):
    root, split_files, lengths, _ = make_ucf(tmp_path)
    dsd = data.build_dataset_dict(root, split_files, layout="class_folders", verbose=False)
    sizes = sum(Path(v["path"]).stat().st_size for v in dsd["train"]["video"])
    written = data.write_parquet(dsd, tmp_path / "pq", max_shard_bytes=sizes // 3 + 1)
    assert [Path(p).name for p in written["train"]] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    val_sizes = sum(Path(v["path"]).stat().st_size for v in dsd["val"]["video"])
    assert len(written["val"]) == -(-val_sizes // (sizes // 3 + 1)) == 2
    tiny = data.write_parquet(dsd, tmp_path / "pq_tiny", max_shard_bytes=1)
    assert len(tiny["train"]) == len(dsd["train"])  # never more shards than rows
    reloaded = data.load_parquet_dataset_dict(tmp_path / "pq")
    assert reloaded["train"]["video_id"] == dsd["train"]["video_id"]
    # an already embedded dataset is sized by its bytes: re-sharding it gives the same split
    again = data.write_parquet(reloaded, tmp_path / "pq_again", max_shard_bytes=sizes // 3 + 1)
    assert len(again["train"]) == 3


def test_truncated_video_that_still_opens_is_excluded(tmp_path):
    """A cut-off .avi can open and report frames, yet its last frame is gone: it must not pass the check."""
    root = tmp_path / "hmdb"
    (root / "wave").mkdir(parents=True)
    good = Path(write_video(root / "wave" / "good.avi", frames(0, num_frames=12))).read_bytes()
    cut = root / "wave" / "cut.avi"
    for percent in range(50, 100):  # find, with decord itself, a cut that opens but fails on its last frame
        cut.write_bytes(good[: len(good) * percent // 100])
        try:
            reader = decord.VideoReader(str(cut))
        except Exception:
            continue
        try:
            reader.get_batch([len(reader) - 1]).asnumpy()
        except Exception:
            break
    else:
        pytest.fail("no truncation of the test video opens but fails on its last frame")
    split = {"train": write_lines(tmp_path / "train.txt", ["wave/good", "wave/cut"])}
    dsd, report = data.build_dataset_dict(root, split, layout="class_folders", verbose=False, return_report=True)
    assert dsd["train"]["video_id"] == ["good"] and dsd["train"]["num_frames"] == [12]
    (undecodable,) = report.splits["train"].undecodable
    assert undecodable["path"] == str(cut)
    # decord's threaded decoder may already fail on the first frame of such a file: either index is right
    assert re.fullmatch(rf"frame ({len(reader) - 1}|0) of {len(reader)} cannot be decoded \(.+\)", undecodable["reason"])
    assert not re.search(r"\[\d\d:\d\d:\d\d\]", undecodable["reason"])  # decord's log prefix is stripped


def test_probe_accepts_widths_where_decord_get_batch_misbehaves(tmp_path):
    """decord 0.6's get_batch fails for some widths (48 px here); the check must still accept such videos."""
    path = write_video(tmp_path / "narrow.mp4", np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8))
    assert data.probe_video(path) == (5, None)


def test_built_and_reloaded_datasets_give_the_same_episodes(tmp_path):
    """Builder output feeds the episode dataset; the parquet copy (bytes) decodes to the same tensors."""
    from m2df_hf.episodes import EpisodeDataset
    from m2df_hf.processing_m2df import M2DFVideoProcessor

    root, split_files, _, _ = make_ucf(tmp_path)
    built = data.build_dataset_dict(root, split_files, layout="class_folders", verbose=False)
    data.write_parquet(built, tmp_path / "pq")
    reloaded = data.load_parquet_dataset_dict(tmp_path / "pq")
    processor = M2DFVideoProcessor(num_frames=4, resize_short_side=32, crop_size=32)
    episodes = [EpisodeDataset(d["train"], processor, way=2, shot=1, query_per_class=1, num_episodes=1, seed=3)[0]
                for d in (built, reloaded)]
    assert episodes[0]["class_names"] == episodes[1]["class_names"]
    assert sorted(episodes[0]["class_names"]) == ["ApplyEyeMakeup", "YoYo"]  # no CamelCase split outside build_ucf101
    for key in ("support_pixel_values", "query_pixel_values", "support_labels", "query_labels"):
        assert torch.equal(episodes[0][key], episodes[1][key]), key
