# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""``anomalib-bayes-pfl``: anomalib's command line with the plugins registered first.

Equivalent to ``anomalib`` where the plugin hook is installed (a regular or editable install of this package); it
also works where ``.pth`` files are not processed (e.g. ``python -S``, some embedded interpreters).

Example:
    anomalib-bayes-pfl train --model BayesPFL --data anomalib_bayes_pfl.AuxiliaryTrain ...
"""

from __future__ import annotations

from .plugin import register_entry_points


def main() -> None:
    """Register entry-point plugins, then run anomalib's CLI on ``sys.argv``."""
    from anomalib.cli.cli import main as anomalib_main

    register_entry_points()
    anomalib_main()


if __name__ == "__main__":
    main()
