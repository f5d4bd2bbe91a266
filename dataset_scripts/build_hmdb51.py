"""Build HMDB51 (ARN split) as a Hugging Face dataset.

Layout expected: hmdb51/<class>/<video>.avi. See docs/datasets.md; `python dataset_scripts/build_hmdb51.py --help`.
"""

import sys

from m2df_hf.data import run_benchmark_cli

if __name__ == "__main__":
    sys.exit(run_benchmark_cli("hmdb51"))
