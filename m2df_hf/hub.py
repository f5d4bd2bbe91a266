"""The model on the Hub: model card from ``results.json``, export to a Hub folder, push, and the CLI for them.

* :func:`write_model_card` fills the card template (``model_cards/clip-m2df.md``) from a run's ``results.json``
  (the training script calls it at the end of a run).
* :func:`save_hub_folder` saves a model as a Hub folder: weights, the remote-code files, the pipeline, processor
  and tokenizer, and an Inference Endpoints ``handler.py`` (the training script saves its model folder with it).
* :func:`export_model` turns a saved model folder into a complete Hub folder (:func:`save_hub_folder` + the card).
* :func:`push_folder` uploads such a folder with ``huggingface_hub`` (the ``HfApi`` object is injectable).
* :func:`add_cli` registers ``m2df predict``, ``m2df export`` and ``m2df push``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"  # model_cards/clip-m2df.md links here
ENDPOINT_HANDLER_PATH = Path(__file__).parent / "endpoint_handler.py"
PIPELINE_TASK = "video-classification"
# Project links used in cards; override with the environment variables when the project lives elsewhere.
CODE_URL = os.environ.get("M2DF_CODE_URL", "https://github.com/clip-m2df/clip-m2df")
SPACE_URL = os.environ.get("M2DF_SPACE_URL", "https://huggingface.co/spaces/clip-m2df/clip-m2df-demo")
TAGS = ["few-shot", "action-recognition", "video", "clip", "video-classification", "custom_code"]

# Display names for datasets and backbones, and the paper's Table (METHOD.md 8.3) for comparison rows.
DATASET_NAMES = {
    "hmdb51": "HMDB51",
    "hmdb": "HMDB51",
    "ucf101": "UCF101",
    "ucf": "UCF101",
    "kinetics100": "Kinetics-100",
    "kinetics": "Kinetics-100",
    "ssv2_full": "SSv2-Full",
    "ssv2": "SSv2-Full",
    "ssv2_small": "SSv2-Small",
    "ssv2_cmn": "SSv2-Small",
    "synthetic": "Synthetic actions",
}
BACKBONE_NAMES = {
    "openai/clip-vit-base-patch16": "CLIP-ViT-B/16",
    "openai/clip-vit-base-patch32": "CLIP-ViT-B/32",
    "openai/clip-vit-large-patch14": "CLIP-ViT-L/14",
}
PAPER_RESULTS = {  # backbone -> dataset -> {shot: 5-way accuracy %}, as reported by Guo et al. (2024)
    "CLIP-RN50": {
        "HMDB51": {1: 66.8, 3: 79.4, 5: 83.0},
        "UCF101": {1: 94.3, 3: 98.0, 5: 98.8},
        "Kinetics-100": {1: 90.1, 3: 92.0, 5: 93.5},
        "SSv2-Full": {1: 56.9, 3: 63.9, 5: 68.0},
        "SSv2-Small": {1: 51.6, 3: 56.3, 5: 60.4},
    },
    "CLIP-ViT-B/16": {
        "HMDB51": {1: 77.0, 3: 84.1, 5: 88.0},
        "UCF101": {1: 97.0, 3: 98.1, 5: 99.3},
        "Kinetics-100": {1: 90.9, 3: 95.1, 5: 96.2},
        "SSv2-Full": {1: 60.1, 3: 68.9, 5: 72.7},
        "SSv2-Small": {1: 52.0, 3: 58.9, 5: 62.8},
    },
}


# --------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------


def load_results(results: dict | list | str | os.PathLike | None) -> list[dict]:
    """Normalise ``results`` (a dict, a list of dicts, a path to a ``results.json``, or None) to a list of runs."""
    if results is None:
        return []
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise ValueError(f"results file not found: {path}")
        results = json.loads(path.read_text())
    runs = [results] if isinstance(results, dict) else list(results)
    for run in runs:
        for key in ("task", "model", "test"):
            if key not in run:
                raise ValueError(f"results.json has no '{key}' section (keys: {sorted(run)}); see docs/hub.md")
        for key in ("accuracy", "ci95", "num_episodes"):
            if key not in run["test"]:
                raise ValueError(f"results.json 'test' section has no '{key}' (keys: {sorted(run['test'])})")
    return runs


def _dataset_name(task: dict) -> str:
    key = str(task["dataset"])
    return DATASET_NAMES.get(key.lower(), key)


def _backbone_name(run: dict) -> str:
    base = run["model"].get("base_model")
    if not base:
        return "tiny random-init CLIP" if run.get("synthetic") else "CLIP (random init)"
    return BACKBONE_NAMES.get(base, base)


def _column(task: dict) -> tuple[str, int, int]:
    return _dataset_name(task), int(task.get("way", 5)), int(task["shot"])


def _fmt_cell(test: dict) -> str:
    return f"{test['accuracy']:.2f} ± {test['ci95']:.2f} (n={int(test['num_episodes']):,})"


def results_table(runs: list[dict]) -> str:
    """A markdown table in the paper's layout: rows are backbones, columns are dataset x shot (accuracy ± CI95).

    Runs that measured the same test episodes before training get a "before training" row. When a column matches
    one of the paper's settings, the paper's reported numbers are added as rows (marked *reported*) for comparison.
    """
    if not runs:
        return "_No evaluation results recorded for this checkpoint._"
    columns = sorted({_column(r["task"]) for r in runs}, key=lambda c: (c[0], c[1], c[2]))
    rows: dict[str, dict] = {}
    for run in runs:
        rows.setdefault(f"{_backbone_name(run)} (this checkpoint)", {})[_column(run["task"])] = _fmt_cell(run["test"])
    for run in runs:  # the same test episodes before training, when the run measured them (the demo does)
        if "before_training" in run:
            name = f"{_backbone_name(run)} (before training)"
            rows.setdefault(name, {})[_column(run["task"])] = _fmt_cell(run["before_training"])
    for backbone, table in PAPER_RESULTS.items():
        reported = {
            col: f"{table[col[0]][col[2]]:.1f}"
            for col in columns
            if col[1] == 5 and col[0] in table and col[2] in table[col[0]]
        }
        if reported:
            rows[f"{backbone} (paper, reported)"] = reported
    header = "| backbone | " + " | ".join(f"{d} {w}-way {k}-shot" for d, w, k in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = [header, sep]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells.get(col, "–") for col in columns) + " |")
    return "\n".join(lines)


def _results_notes(runs: list[dict]) -> str:
    if not runs:
        return ""
    notes = [
        "Accuracy (%) on the test split, mean over episodes ± 95% confidence interval, n = number of test episodes."
    ]
    for run in runs:
        name = f"{_dataset_name(run['task'])} {run['task'].get('way', 5)}-way {run['task']['shot']}-shot"
        if "val_best" in run:
            v = run["val_best"]
            step = f" at step {v['step']}" if "step" in v else ""
            notes.append(
                f"- {name}: model selected on val ({v['accuracy']:.2f} ± {v['ci95']:.2f}, "
                f"{int(v['num_episodes']):,} episodes{step}); the test split was evaluated once."
            )
        if "before_training" in run:
            b = run["before_training"]
            notes.append(
                f"- {name}: before training, the same test episodes gave {b['accuracy']:.2f} ± {b['ci95']:.2f}."
            )
    return "\n".join(notes)


def _setting_rows(run: dict) -> dict[str, str]:
    task, model, test = run["task"], run["model"], run["test"]
    dataset_id = f" (`{task['dataset_id']}`)" if task.get("dataset_id") else ""
    # Training writes both the test run's count and the total over all evaluations; the brief's format has one.
    encodings = run.get("test_backbone_frame_encodings", run.get("backbone_frame_encodings"))
    return {
        "dataset": f"{task['dataset']}{dataset_id}",
        "way / shot / queries per class": f"{task.get('way', 5)} / {task['shot']} / {task.get('query_per_class', 1)}",
        "model preset": model.get("preset", "–"),
        "backbone": model.get("base_model") or "tiny random-init CLIP (no pretrained weights)",
        "frames per video (T)": str(model.get("num_frames", "–")),
        "test episodes / split / seed": (
            f"{test['num_episodes']:,} / {test.get('split', 'test')} / {test.get('seed', '–')}"
        ),
        "backbone frame encodings at test": f"{encodings:,}" if encodings is not None else "–",
        "synthetic data": "yes" if run.get("synthetic") else "no",
    }


def _settings_table(runs: list[dict]) -> str:
    if not runs:
        return "_Not recorded._"
    rows = [_setting_rows(run) for run in runs]
    lines = ["| setting | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |"]
    lines.append("|---|" + "---|" * len(runs))
    for label in rows[0]:
        lines.append(f"| {label} | " + " | ".join(row[label] for row in rows) + " |")
    return "\n".join(lines)


def _protocol(runs: list[dict]) -> str:
    if not runs:
        return (
            "This checkpoint has not been evaluated. `m2df evaluate --model DIR --dataset ... --episodes 10000` runs "
            "the protocol used for published checkpoints."
        )
    n = ", ".join(f"{int(r['test']['num_episodes']):,}" for r in runs)
    text = (
        f"Each number is the mean accuracy over {n} random N-way K-shot test episodes (way, shot and queries per "
        "class are in the settings), drawn from the test split's classes with a fixed seed, so that two runs test "
        "on the same episodes. The 95% "
        "confidence interval is `1.96 * std / sqrt(n)` over per-episode accuracies (population std), as in the "
        "few-shot action recognition literature. The evaluation transform is deterministic, so each test video is "
        "encoded once and every episode's head runs from the cached frame features. The prediction is the argmax "
        "of the logits. With the `paper` preset the probability prompt selector takes its argmax at evaluation; "
        "the `reference` preset samples it, as the official release did, which makes test numbers stochastic."
    )
    if all("val_best" in r for r in runs):
        text += (
            " The model was selected on the **val** split and the test split was run once, at the end, on the "
            "selected model (the official release selected on test)."
        )
    return text


def _limits(runs: list[dict]) -> str:
    items = [
        "Custom code: loading needs `trust_remote_code=True`, and the Hub's hosted widgets and serverless inference "
        "do not run it. Use the pipeline, the Space, or an Inference Endpoint with the bundled `handler.py`.",
        "Few-shot means the model ranks only the classes you give it, by comparison with your support videos; it has "
        "no fixed label set, and its scores are relative to the support set (they always sum to 1).",
        "Zero-shot mode is plain CLIP text-video similarity, not this paper's method; it is usually much weaker.",
        "Video preprocessing resizes with torch bicubic interpolation and normalises with CLIP's mean/std; numbers "
        "can differ slightly from pipelines that use PIL resizing or no normalisation (as the official release did).",
        "The results come from a single training run and seed; the confidence interval covers episode sampling, "
        "not training variance.",
        "Training data inherits the biases of its dataset; check the dataset's licence and terms before using the "
        "model beyond research.",
    ]
    if any(r.get("synthetic") for r in runs):
        items.insert(
            0,
            "**Synthetic demo:** trained and tested on generated videos with a small random-init CLIP. It does not "
            "recognise real actions, and its accuracy is not comparable with the paper's.",
        )
    return "\n".join(f"- {item}" for item in items)


def _card_data(runs: list[dict], model_name: str) -> ModelCardData:
    eval_results = []
    datasets = []
    for run in runs:
        task, test = run["task"], run["test"]
        dataset, way, shot = _column(task)
        dataset_id = task.get("dataset_id") or str(task["dataset"])
        if task.get("dataset_id"):
            datasets.append(task["dataset_id"])
        eval_results.append(
            EvalResult(
                task_type="video-classification",
                task_name=f"Few-shot action recognition ({way}-way {shot}-shot)",
                dataset_type=dataset_id,
                dataset_name=dataset,
                dataset_config=f"{way}-way-{shot}-shot",
                dataset_split=test.get("split", "test"),
                metric_type="accuracy",
                metric_name=f"{way}-way {shot}-shot accuracy (%, {int(test['num_episodes'])} episodes)",
                metric_value=float(test["accuracy"]),
                metric_args={"ci95": float(test["ci95"]), "num_episodes": int(test["num_episodes"])},
            )
        )
    base_models = sorted({r["model"]["base_model"] for r in runs if r["model"].get("base_model")})
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=PIPELINE_TASK,
        license="apache-2.0",
        tags=TAGS + (["synthetic"] if any(r.get("synthetic") for r in runs) else []),
        base_model=base_models[0] if len(base_models) == 1 else (base_models or None),
        datasets=sorted(set(datasets)) or None,
        metrics=["accuracy"],
        eval_results=eval_results or None,
        inference=False,  # custom code: no hosted widget can run it (CONVENTIONS.md section 3)
    )


def render_model_card(results=None, repo_id: str | None = None, prompt_template: str = "a photo of {}") -> ModelCard:
    """Build the model card (YAML metadata + body) from ``results`` (see :func:`load_results`)."""
    runs = load_results(results)
    synthetic = any(r.get("synthetic") for r in runs)
    title = "CLIP-M2DF synthetic demo" if synthetic else "CLIP-M2DF few-shot action recognition"
    if runs and not synthetic:
        first = runs[0]
        title = f"CLIP-M2DF ({_backbone_name(first)}, {_dataset_name(first['task'])})"
    config_names = [f"{r['task']['dataset']}_{r['task']['shot']}shot_vitb16" for r in runs if not r.get("synthetic")]
    run_configs = [r["config"] for r in runs if r.get("config")]
    return ModelCard.from_template(
        _card_data(runs, model_name=repo_id.split("/")[-1] if repo_id else "clip-m2df"),
        template_path=str(TEMPLATE_PATH),
        title=title,
        synthetic=synthetic,
        results_table=results_table(runs),
        results_notes=_results_notes(runs),
        settings_table=_settings_table(runs),
        run_config=yaml.safe_dump(run_configs[0] if len(run_configs) == 1 else run_configs, sort_keys=False).strip()
        if run_configs
        else "",
        protocol=_protocol(runs),
        limits=_limits(runs),
        repo_id=repo_id or "path/to/clip-m2df",
        config_name=config_names[0] if config_names else "demo",
        prompt_template=prompt_template,
        code_url=CODE_URL,
        space_url=SPACE_URL,
    )


def write_model_card(model_dir, results=None, repo_id: str | None = None) -> Path:
    """Write ``model_dir/README.md`` from ``results`` (a results dict, a list of them, or a ``results.json`` path).

    The training script calls this at the end of a run. Returns the path of the card.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model folder not found: {model_dir}")
    prompt_template = "a photo of {}"
    config_path = model_dir / "config.json"
    if config_path.is_file():
        prompt_template = json.loads(config_path.read_text()).get("prompt_template", prompt_template)
    card = render_model_card(results, repo_id=repo_id, prompt_template=prompt_template)
    path = model_dir / "README.md"
    card.save(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# Export and push
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def registered_pipeline():
    """Register the few-shot pipeline as ``video-classification`` while saving, then restore the registry.

    Registering sets the class's ``_registered_impl``, which ``Pipeline.save_pretrained`` turns into
    ``config.json["custom_pipelines"]``. The global registry entry is restored afterwards so that the built-in
    video-classification pipeline keeps working for other models in this process.
    """
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .pipeline_m2df import M2DFFewShotVideoClassificationPipeline

    previous = PIPELINE_REGISTRY.supported_tasks.pop(PIPELINE_TASK, None)  # popped: no "overwriting" warning
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=M2DFFewShotVideoClassificationPipeline, pt_model=AutoModel
    )
    try:
        yield M2DFFewShotVideoClassificationPipeline
    finally:
        if previous is None:
            PIPELINE_REGISTRY.supported_tasks.pop(PIPELINE_TASK, None)
        else:
            PIPELINE_REGISTRY.supported_tasks[PIPELINE_TASK] = previous


def load_components(model_dir):
    """Load model, video processor and tokenizer of a saved model folder with this package's classes."""
    from transformers import AutoTokenizer

    from configuration_m2df import M2DFConfig
    from modeling_m2df import M2DFModel

    from .processing_m2df import M2DFVideoProcessor

    model_dir = Path(model_dir)
    needed = ("config.json", "model.safetensors", "preprocessor_config.json")
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if not (model_dir / "tokenizer_config.json").is_file():
        missing.append("tokenizer files (tokenizer_config.json)")
    if missing:
        raise ValueError(f"{model_dir} is not a complete saved model folder: missing {', '.join(missing)}")
    M2DFConfig.register_for_auto_class()
    M2DFModel.register_for_auto_class("AutoModel")
    M2DFVideoProcessor.register_for_auto_class("AutoFeatureExtractor")
    model = M2DFModel.from_pretrained(model_dir).eval()
    processor = M2DFVideoProcessor.from_pretrained(model_dir)
    # Passing the config stops AutoTokenizer from asking to trust the folder's code (config.json has auto_map).
    tokenizer = AutoTokenizer.from_pretrained(model_dir, config=model.config)
    return model, processor, tokenizer


def save_hub_folder(model, processor, tokenizer, out_dir) -> Path:
    """Save a model with everything the Hub needs into ``out_dir`` (the one code path for training and export).

    Writes ``config.json`` (``auto_map`` and ``custom_pipelines``), ``model.safetensors``, the remote-code files
    (``configuration_m2df.py``, ``modeling_m2df.py``, ``pipeline_m2df.py``, ``processing_m2df.py``),
    ``preprocessor_config.json``, the tokenizer files, the Inference Endpoints ``handler.py`` and its
    ``requirements.txt``. The card and ``results.json`` are the caller's (they need the run's results).
    Call it on the main process only. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    with registered_pipeline() as pipeline_class:
        pipe = pipeline_class(model=model, feature_extractor=processor, tokenizer=tokenizer, device=model.device)
        pipe.save_pretrained(out_dir)
    shutil.copyfile(ENDPOINT_HANDLER_PATH, out_dir / "handler.py")
    (out_dir / "requirements.txt").write_text("decord>=0.6.0\n")  # installed by Inference Endpoints for handler.py
    return out_dir


def export_model(model_dir, out_dir, repo_id: str | None = None, overwrite: bool = False) -> Path:
    """Write a complete Hub folder for the model saved in ``model_dir`` into ``out_dir``.

    The folder holds what :func:`save_hub_folder` writes, plus ``README.md`` (filled from
    ``model_dir/results.json`` when present, with ``repo_id`` in its usage examples) and ``results.json`` (when
    present). The code written is this package's, not the folder's copy.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"export into the model folder itself ({out_dir}) is not allowed; pick another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {out_dir} is not empty; remove it or pass overwrite=True (--overwrite)")
        shutil.rmtree(out_dir)
    save_hub_folder(*load_components(model_dir), out_dir)
    results_path = model_dir / "results.json"
    results = None
    if results_path.is_file():
        shutil.copyfile(results_path, out_dir / "results.json")
        results = results_path
    write_model_card(out_dir, results, repo_id=repo_id)
    return out_dir


REQUIRED_HUB_FILES = (
    "config.json",
    "model.safetensors",
    "configuration_m2df.py",
    "modeling_m2df.py",
    "pipeline_m2df.py",
    "processing_m2df.py",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "README.md",
)
PUSH_IGNORE_PATTERNS = ["__pycache__/*", "*/__pycache__/*", "*.pyc"]


def push_folder(
    folder, repo_id: str, api: HfApi | None = None, private: bool = False, commit_message: str | None = None
):
    """Create ``repo_id`` (if needed) and upload ``folder`` to it. Returns the ``CommitInfo`` of the upload.

    ``api`` defaults to ``HfApi()`` (token from ``HF_TOKEN`` or ``hf auth login``); tests pass their own.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder not found: {folder}")
    missing = [name for name in REQUIRED_HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a complete Hub folder (missing {', '.join(missing)}); run `m2df export` first"
        )
    if repo_id.count("/") != 1:
        raise ValueError(f"repo id must look like 'org/name', got {repo_id!r}")
    api = api if api is not None else HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message or "Upload CLIP-M2DF model (m2df push)",
        ignore_patterns=list(PUSH_IGNORE_PATTERNS),
    )


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def parse_support(items: list[str]) -> dict[str, list[str]]:
    """Parse ``--support "class=path,path"`` items into an ordered ``{class: [paths]}``."""
    support: dict[str, list[str]] = {}
    for item in items:
        name, sep, paths = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--support expects 'class name=path,path', got {item!r}")
        videos = [p.strip() for p in paths.split(",") if p.strip()]
        if not videos:
            raise ValueError(f"--support class {name!r} has no videos")
        support.setdefault(name, []).extend(videos)
    return support


def load_pipeline(model: str, device: str | None = None):
    """The few-shot pipeline of a saved model folder (from training or export) or Hub id."""
    from transformers import pipeline

    config_path = Path(model) / "config.json"
    if config_path.is_file() and "custom_pipelines" not in json.loads(config_path.read_text()):
        raise ValueError(
            f"{model} has no pipeline registration (config.json has no 'custom_pipelines'; it was saved by an older "
            f"version): run `m2df export --model {model} --out NEW_FOLDER` and use NEW_FOLDER"
        )
    kwargs = {"device": device} if device else {}
    return pipeline(PIPELINE_TASK, model=model, trust_remote_code=True, **kwargs)


def _predict(args) -> int:
    if not args.support and not args.candidate_labels:
        raise SystemExit("m2df predict: give --support (few-shot) or --candidate-labels (zero-shot)")
    pipe = load_pipeline(args.model, device=args.device)
    queries = args.query
    if args.support:
        results = pipe(queries, support_set=parse_support(args.support), top_k=args.top_k)
    else:
        labels = [c.strip() for c in args.candidate_labels.split(",") if c.strip()]
        results = pipe(queries, candidate_labels=labels, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"query": q, "predictions": r} for q, r in zip(queries, results, strict=True)], indent=2))
        return 0
    for query, ranking in zip(queries, results, strict=True):
        mode = ranking[0].get("mode", "few-shot") if ranking else "few-shot"
        print(f"{query} ({mode}):")
        for rank, item in enumerate(ranking, 1):
            print(f"  {rank}. {item['label']:<30} {item['score']:.4f}")
    return 0


def _export(args) -> int:
    out = export_model(args.model, args.out, repo_id=args.repo_id, overwrite=args.overwrite)
    print(f"Hub folder written to {out}:")
    for path in sorted(p.name for p in out.iterdir()):
        print(f"  {path}")
    return 0


def _push(args) -> int:
    info = push_folder(args.folder, args.repo_id, private=args.private, commit_message=args.message)
    print(f"Pushed {args.folder} to https://huggingface.co/{args.repo_id} ({getattr(info, 'oid', info)})")
    return 0


def add_cli(subparsers) -> None:
    """Register ``predict``, ``export`` and ``push`` on the ``m2df`` command's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "predict",
        help="classify query videos against a few labelled support videos per class",
        formatter_class=fmt,
        description="Rank the support classes for each query video (few-shot), or rank class names by CLIP "
        "text-video similarity (zero-shot, --candidate-labels).",
        epilog="examples:\n"
        '  m2df predict --model outputs/demo/model --support "jump=a.mp4,b.mp4" --support "run=c.mp4,d.mp4" \\\n'
        "      --query q.mp4\n"
        '  m2df predict --model org/clip-m2df --support "jump=a.mp4" --support "run=c.mp4" \\\n'
        "      --query q1.mp4 q2.mp4 --json\n"
        '  m2df predict --model org/clip-m2df --candidate-labels "jumping,running" --query q.mp4   # zero-shot\n',
    )
    p.add_argument("--model", required=True, help="saved/exported model folder or Hub id")
    p.add_argument(
        "--support", action="append", default=[], metavar='"CLASS=PATH,PATH"', help="one per class (repeat)"
    )
    p.add_argument("--candidate-labels", help="comma-separated class names for zero-shot mode (no support videos)")
    p.add_argument("--query", required=True, nargs="+", help="query video path(s); several are batched")
    p.add_argument("--top-k", type=int, default=5, help="how many labels to print per query (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{query, predictions: [{label, score, mode}]}]")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "export",
        help="write a complete Hub folder (weights, remote code, pipeline, processor, tokenizer, card, handler)",
        formatter_class=fmt,
        description="Export a saved model folder (e.g. from train_accelerate.py) as a folder ready for the Hub.",
        epilog="examples:\n"
        "  m2df export --model outputs/demo/model --out hub/clip-m2df-demo\n"
        "  m2df export --model outputs/ssv2_small_1shot/model --out hub/ssv2 --repo-id org/clip-m2df-ssv2 \\\n"
        "      --overwrite\n",
    )
    p.add_argument(
        "--model", required=True, help="saved model folder (config.json, model.safetensors, processor, tokenizer)"
    )
    p.add_argument("--out", required=True, help="output Hub folder (must be empty unless --overwrite)")
    p.add_argument("--repo-id", default=None, help="Hub id to use in the card's usage examples")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "push",
        help="upload an exported Hub folder to the Hugging Face Hub",
        formatter_class=fmt,
        description="Create the model repo if needed and upload the folder (needs HF_TOKEN or `hf auth login`).",
        epilog="examples:\n"
        "  m2df push --folder hub/clip-m2df-demo --repo-id my-org/clip-m2df-demo\n"
        "  m2df push --folder hub/ssv2 --repo-id my-org/clip-m2df-ssv2 --private\n",
    )
    p.add_argument("--folder", required=True, help="folder written by `m2df export`")
    p.add_argument("--repo-id", required=True, help="target model repo, 'org/name'")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=_push)
