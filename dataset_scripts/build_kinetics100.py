"""Build Kinetics-100 (CMN split; the 24 x 100 test list) as a Hugging Face dataset.

Layout expected: clips <ytid>_<start>_<end>.mp4, flat or in class folders. See docs/datasets.md; `python dataset_scripts/build_kinetics100.py --help`.
"""

import sys

from m2df_hf.data import run_benchmark_cli

if __name__ == "__main__":
    sys.exit(run_benchmark_cli("kinetics100"))
