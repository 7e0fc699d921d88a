"""Re-fits the performance model's free parameters to published speeds and predicts the held-out ones.

The table of published figures, each with its source and deployment, is docs/published-speeds.yaml; rows
marked `fit` (at most half of each side) fix the LPU's per-op and per-hop latencies and the
GPU's HBM efficiency and kernel latency; every row is then timed with the defaults in config.py and
hardware.py (the layouts compiled afresh, at the planner's default settings) and its error stated.

    python benchmarks/fit_perfmodel.py              # fit, compare with the defaults, print the predictions
    python benchmarks/fit_perfmodel.py --write-docs # also rewrite the predictions table in docs/perfmodel.md

Exit status 1 when the fit no longer reproduces the defaults (update them, then re-run with --write-docs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lpu_runtime import calibration

DOCS = calibration.PERFMODEL_DOC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--published", type=Path, default=calibration.PUBLISHED, help="the YAML table")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the table in docs/perfmodel.md")
    args = parser.parse_args(argv)
    rows = calibration.load_published(args.published)
    fitted, current = calibration.fit(rows), calibration.defaults()
    matches = calibration.reproduces(fitted, current)
    print(f"{'parameter':<26} {'fitted':>12} {'default':>12}")
    for name in calibration.FittedParameters.__dataclass_fields__:
        print(f"{name:<26} {getattr(fitted, name):>12.4g} {getattr(current, name):>12.4g}")
    table = calibration.render_predictions(calibration.predictions(rows))
    print("\n" + table)
    if args.write_docs:
        text = DOCS.read_text()
        start = text.index(calibration.TABLE_BEGIN) + len(calibration.TABLE_BEGIN)
        DOCS.write_text(text[:start] + "\n" + table + "\n" + text[text.index(calibration.TABLE_END) :])
        print(f"\nwrote the table into {DOCS}")
    if not matches:
        tolerance = calibration.TOLERANCE
        print(
            f"\nthe fit differs from the defaults by more than {tolerance:.0%}: update them", file=sys.stderr
        )
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
