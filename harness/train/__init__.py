"""``astra-train``: codebook calibration, noise-augmented fine-tuning and evaluation (not yet available)."""

import sys


def main() -> None:
    print("astra-train: not yet available (see the accuracy-pipeline issue)", file=sys.stderr)
    sys.exit(1)
