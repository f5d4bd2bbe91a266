"""Build SSv2-Full (OTAM split; numeric class ids named through --labels-json) as a Hugging Face dataset.

Layout expected: flat <id>.webm. See docs/datasets.md; `python dataset_scripts/build_ssv2_full.py --help`.
"""

import sys

from m2df_hf.data import run_benchmark_cli

if __name__ == "__main__":
    sys.exit(run_benchmark_cli("ssv2_full"))
