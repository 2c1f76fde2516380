"""python -m blast_radius [--write-readme]: the blast-radius table of the edit catalogue on prod."""

from __future__ import annotations

import argparse

from blast_radius.harness import Baseline, catalogue, role_sizes
from blast_radius.report import README, table, with_table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m blast_radius", description=__doc__)
    parser.add_argument("--write-readme", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    baseline = Baseline()
    generated = table(catalogue(baseline), role_sizes(baseline.resources))
    if args.write_readme:
        README.write_text(with_table(README.read_text(), generated))
    else:
        print(generated, end="")


if __name__ == "__main__":
    main()
