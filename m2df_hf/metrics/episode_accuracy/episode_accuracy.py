"""Few-shot episode accuracy: mean per-episode accuracy and its 95% confidence interval.

Loaded by path, offline: ``evaluate.load(".../metrics/episode_accuracy")`` (the folder name equals the file
name, as ``evaluate`` requires). Hub metrics cannot be loaded without a network.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Mean accuracy over few-shot episodes, in percent, with the 95% confidence interval used throughout the
few-shot action recognition literature: ``CI95 = 1.96 * std / sqrt(n)``, where ``std`` is the population
standard deviation (ddof = 0, NumPy's default) of the per-episode accuracies and ``n`` the number of episodes.
Each input is one episode's accuracy, a fraction in [0, 1] (correct queries / queries in that episode).
"""

_KWARGS_DESCRIPTION = """
Args:
    episode_accuracies (`list` of `float`): per-episode accuracy, each in [0, 1].
Returns:
    accuracy (`float`): 100 * mean of the episode accuracies.
    ci95 (`float`): 100 * 1.96 * population std / sqrt(n).
    num_episodes (`int`): n.
Examples:
    >>> metric = evaluate.load("m2df_hf/metrics/episode_accuracy")
    >>> metric.compute(episode_accuracies=[1.0, 0.6, 0.8, 0.6])
    {'accuracy': 75.0, 'ci95': 16.2..., 'num_episodes': 4}
"""

_CITATION = """
@article{guo2024clipm2df,
  title={Multi-view Distillation based on Multi-modal Fusion for Few-shot Action Recognition (CLIP-M2DF)},
  author={Guo, Fei and Wang, YiKang and Qi, Han and Zhu, Li and Sun, Jing},
  journal={Knowledge-Based Systems}, volume={304}, pages={112539}, year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EpisodeAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"episode_accuracies": datasets.Value("float64")}),
        )

    def _compute(self, episode_accuracies):
        acc = np.asarray(episode_accuracies, dtype=np.float64)
        if acc.size == 0:
            raise ValueError("episode_accuracy: no episodes were given (episode_accuracies is empty)")
        if not np.all(np.isfinite(acc)) or acc.min() < 0.0 or acc.max() > 1.0:
            bad = acc[~((acc >= 0.0) & (acc <= 1.0))][:5]
            raise ValueError(f"episode_accuracy: per-episode accuracies must be fractions in [0, 1]; got {bad.tolist()}")
        return {
            "accuracy": float(100.0 * acc.mean()),
            "ci95": float(100.0 * 1.96 * acc.std() / np.sqrt(acc.size)),
            "num_episodes": int(acc.size),
        }
