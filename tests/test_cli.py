"""`m2df predict`, `m2df export` and `m2df push` as registered by m2df_hf.hub.add_cli."""

from __future__ import annotations

import json

import pytest
import torch
from hub_helpers import exported_dir, support_set, tiny_model_dir, videos
from transformers import pipeline

from m2df_hf import cli, hub


@pytest.fixture(autouse=True)
def hub_commands_only(monkeypatch):
    """The real `m2df` dispatcher, with only this area's commands registered (other areas test theirs)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("m2df_hf.hub",))


def run_cli(argv: list[str]) -> int:
    return cli.main(argv)


def support_args() -> list[str]:
    out = []
    for name, paths in support_set().items():
        out += ["--support", f"{name}={','.join(paths)}"]
    return out


@pytest.fixture(scope="module")
def pipe():
    return pipeline("video-classification", model=str(exported_dir()), trust_remote_code=True)


def test_predict_json_matches_the_pipeline(pipe, capsys):
    v = videos()
    # the folder as training saves it (not exported) works with the standard pipeline call
    argv = ["predict", "--model", str(tiny_model_dir()), *support_args(), "--query", v["q0"], v["q1"], "--top-k", "2"]
    assert run_cli([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = pipe([v["q0"], v["q1"]], support_set=support_set(), top_k=2)
    assert [item["query"] for item in printed] == [v["q0"], v["q1"]]
    for item, ranking in zip(printed, expected, strict=True):
        assert [r["label"] for r in item["predictions"]] == [r["label"] for r in ranking]
        torch.testing.assert_close(
            torch.tensor([r["score"] for r in item["predictions"]]), torch.tensor([r["score"] for r in ranking])
        )


def test_predict_text_output_and_zero_shot(pipe, capsys):
    v = videos()
    run_cli(["predict", "--model", str(exported_dir()), "--candidate-labels", "jumping, running", "--query", v["q0"]])
    lines = capsys.readouterr().out.splitlines()
    expected = pipe(v["q0"], candidate_labels=["jumping", "running"])
    assert lines == [f"{v['q0']} (zero-shot):"] + [
        f"  {rank}. {r['label']:<30} {r['score']:.4f}" for rank, r in enumerate(expected, 1)
    ]


def test_parse_support_and_its_errors():
    parsed = hub.parse_support(["a=x.mp4, y.mp4", "b=z.mp4", "a=w.mp4"])
    assert parsed == {"a": ["x.mp4", "y.mp4", "w.mp4"], "b": ["z.mp4"]}
    with pytest.raises(ValueError, match="expects 'class name=path,path'"):
        hub.parse_support(["no-equals-sign.mp4"])
    with pytest.raises(ValueError, match="class 'a' has no videos"):
        hub.parse_support(["a= , "])


@pytest.mark.parametrize("command", ["predict", "export", "push"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"m2df {command} --" in out


def test_push_command_uses_the_hub_api(monkeypatch, capsys):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs["private"]))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs["folder_path"]))
            return type("Info", (), {"oid": "b" * 40})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    assert run_cli(["push", "--folder", str(exported_dir()), "--repo-id", "org/demo", "--private"]) == 0
    assert calls == [("create_repo", "org/demo", True), ("upload_folder", "org/demo", str(exported_dir()))]
    assert "https://huggingface.co/org/demo" in capsys.readouterr().out


def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    v = videos()
    missing = str(tmp_path / "nope.mp4")
    argv = ["predict", "--model", str(exported_dir()), "--support", f"a={missing}", "--query", v["q0"]]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err  # before the error line: loading progress bars and logs
    assert "Traceback (most recent call last)" not in err and err.endswith("\n")
    last = err.replace("\r", "\n").splitlines()[-1]
    assert last.startswith("m2df predict: error: ") and f"video file not found: {missing!r}" in last
    assert run_cli(["export", "--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2df export: error: ") and "no_model is not a complete saved model folder" in err
    monkeypatch.setenv("M2DF_DEBUG", "1")  # the traceback, for bug reports
    with pytest.raises(ValueError, match="video file not found"):
        run_cli(argv)


def test_folder_without_pipeline_registration_says_to_export(tmp_path):
    """A model folder saved before training wrote `custom_pipelines` gets told what to run."""
    old = tmp_path / "old_model"
    old.mkdir()
    config = json.loads((tiny_model_dir() / "config.json").read_text())
    del config["custom_pipelines"]
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no 'custom_pipelines'.*m2df export --model .*old_model --out NEW_FOLDER"):
        hub.load_pipeline(str(old))
