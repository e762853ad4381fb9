"""``astra-plot``: placeholder until the plotting issue lands."""

import sys


def main() -> None:
    print("astra-plot: not yet available", file=sys.stderr)
    sys.exit(1)
