"""Run anomalib's own model and CLI integration suites on BayesPFL in its default configuration.

anomalib checks each of its models with ``tests/integration/model/test_models.py`` and its CLI with
``tests/integration/cli/test_cli.py``; a new user's first ``anomalib train --model BayesPFL --data MVTecAD`` is what
they do. Their files are not in anomalib's sdist or wheel, so they are taken from a git checkout of the tag of the
installed anomalib (cloned sparsely into ``.venv/anomalib-suite/`` on first use: this needs GitHub, so it is not
part of CI's ``make test``) and run there unchanged, with ``devtools/anomalib_suite_plugin.py`` selecting BayesPFL
and giving it the tiny offline backbone. Their dummy-data fixture also writes parquet files, which needs
``pyarrow`` (anomalib's ``datasets`` extra): it is installed into ``.venv/anomalib-suite/site`` and put on the path
of the suite run only, so the project's environment stays what CI tests.

Usage::

    .venv/bin/python devtools/anomalib_suite.py                     # fetch once, then run both suites
    .venv/bin/python devtools/anomalib_suite.py --source ~/anomalib # an anomalib checkout of the same version
    make anomalib-suite ARGS="--source ~/anomalib -- -k 'not export'"

Arguments after ``--`` go to pytest. Exit status: pytest's; 2 when the suites cannot be found or fetched.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".venv" / "anomalib-suite"
"""Checkouts and the suite-only packages; inside the virtual environment, whose anomalib version they follow."""
REPOSITORY = "https://github.com/open-edge-platform/anomalib"
SUITES = ("tests/integration/model/test_models.py", "tests/integration/cli/test_cli.py")
SUITE_PACKAGES = {"pyarrow": "pyarrow"}
"""Module -> distribution the suites' fixtures need beyond the project's environment."""
PLUGIN = "anomalib_suite_plugin"


def fetch(version: str, target: Path) -> None:
    """Clone the tests of anomalib's tag ``v<version>`` into ``target`` (sparse: ``tests/`` and the root files)."""
    clone = ["git", "clone", "--quiet", "--depth", "1", "--filter=blob:none", "--sparse", "--branch", f"v{version}"]
    subprocess.run([*clone, REPOSITORY, str(target)], check=True)
    subprocess.run(["git", "-C", str(target), "sparse-checkout", "set", "tests"], check=True)


def suite_packages(site: Path) -> None:
    """Install the suites' extra packages into ``site`` where the environment lacks them."""
    missing = [
        package
        for module, package in SUITE_PACKAGES.items()
        if importlib.util.find_spec(module) is None and not (site / module).is_dir()
    ]
    if missing:
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), *missing]
        subprocess.run(pip, check=True)


def main(argv: list[str] | None = None) -> int:
    """Find or fetch the suites, then run them with the plugin; pytest's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="an anomalib checkout (default: fetch the installed version's tag)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = parser.parse_args(argv)
    version = importlib.metadata.version("anomalib")
    source = args.source or WORK / f"v{version}"
    if args.source is None and not source.exists():
        try:
            fetch(version, source)
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"Could not fetch anomalib v{version}'s tests from {REPOSITORY} ({error}); give --source.")
            return 2
    missing = [suite for suite in SUITES if not (source / suite).is_file()]
    if missing:
        print(f"{source} lacks {', '.join(missing)}: give an anomalib checkout (v{version}) as --source.")
        return 2
    site = WORK / "site"
    suite_packages(site)
    path = [str(REPO / "devtools"), str(REPO), str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    command = [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", *SUITES, *args.pytest_args]
    return subprocess.run(command, cwd=source, env=os.environ | {"PYTHONPATH": os.pathsep.join(path)}).returncode


if __name__ == "__main__":
    sys.exit(main())
