"""Build UCF101 (ARN split) as a Hugging Face dataset.

Layout expected: UCF-101/<Class>/v_<Class>_gXX_cYY.avi. See docs/datasets.md; `python dataset_scripts/build_ucf101.py --help`.
"""

import sys

from m2df_hf.data import run_benchmark_cli

if __name__ == "__main__":
    sys.exit(run_benchmark_cli("ucf101"))
