"""Mutation testing of known bugs: does the test suite still catch each one?

Every entry of ``devtools/mutations.toml`` re-introduces a bug by replacing an exact code snippet. For each selected
entry the tool copies the working tree (``git ls-files -co --exclude-standard``: tracked files plus untracked ones
that are not ignored) into a temporary folder, applies the replacement there and runs the entry's tests with the
copy first on ``PYTHONPATH``, so the copy's ``anomalib_bayes_pfl`` shadows the editable install. The working tree
itself is never modified. A pytest plugin injected into every run records where ``anomalib_bayes_pfl`` and its
submodules were imported from; the tool stops if any of them came from outside the copy.

Before any mutant runs, the union of the selected entries' tests runs once on an unmutated copy: if it fails, a
"killed" mutant would prove nothing, so the tool stops.

Usage::

    .venv/bin/python devtools/mutants.py                 # every entry
    .venv/bin/python devtools/mutants.py --only ID ...   # some entries
    .venv/bin/python devtools/mutants.py --list          # entries and whether their snippets still match
    .venv/bin/python devtools/mutants.py --timeout 900 --keep
    make mutants ARGS="--only dice-eps-one"

Entry fields: ``id``, ``description``, ``file`` (repo-relative), ``find`` (must occur exactly once in ``file``, else
the entry is STALE), ``replace``, ``tests`` (pytest node ids or paths) and optionally ``also``: further edits of the
same mutant, each a table with ``file``, ``find`` and ``replace``, for bugs that need more than one change.

Exit status: 0 when every selected mutant was killed; 1 when one survived, was stale or gave an error; 2 for bad
arguments, a bad mutation file or a failing baseline; 3 when the copy's package was not the one imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the third-party package, if installed
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

REFERENCE_ENV = "BAYES_PFL_REFERENCE"
"""Where the tests find the official code's golden files (``tests/reference_files.py``), set for the copies."""
MUTATIONS_FILE = Path(__file__).resolve().with_name("mutations.toml")
PACKAGE = "anomalib_bayes_pfl"
DEFAULT_TIMEOUT_S = 600.0
SKIPPED_TOP_LEVEL = (".git", ".venv")
GUARD_MODULE = "_mutants_guard"
GUARD_ENV = "MUTANTS_GUARD_REPORT"
GUARD_SOURCE = f'''"""pytest plugin of devtools/mutants.py: records where {PACKAGE} was imported from."""

import json
import os
import sys


def _record() -> None:
    error = None
    try:
        import {PACKAGE}  # noqa: F401 - make sure the package itself is imported at least once
    except Exception as exception:  # a mutation may break the import; pytest reports that itself
        error = repr(exception)
    modules = {{
        name: getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), None)
        for name, module in list(sys.modules.items())
        if name == "{PACKAGE}" or name.startswith("{PACKAGE}.")
    }}
    with open(os.environ["{GUARD_ENV}"], "w", encoding="utf-8") as report:
        json.dump({{"modules": modules, "import_error": error}}, report)


def pytest_collection_finish(session):
    _record()


def pytest_sessionfinish(session, exitstatus):
    _record()
'''

KILLED, SURVIVED, STALE, ERROR = "killed", "SURVIVED", "STALE", "error"
KILLED_COLLECTION, KILLED_TIMEOUT = "killed (collection error)", "killed (timeout)"


class ShadowingError(RuntimeError):
    """The tests imported the package from somewhere other than the copy under test."""


@dataclass(frozen=True)
class Edit:
    """One exact-snippet replacement in one file."""

    file: str
    find: str
    replace: str


@dataclass(frozen=True)
class Mutation:
    """A recorded bug: one or more edits and the tests that should catch it."""

    id: str
    description: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]

    @property
    def file(self) -> str:
        """The file of the main edit."""
        return self.edits[0].file


@dataclass
class Outcome:
    """What happened to one mutant."""

    status: str
    seconds: float = 0.0
    detail: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        """Killed in any way (test failure, collection error caused by the mutation, timeout)."""
        return self.status.startswith(KILLED)


# -- the mutation list ------------------------------------------------------------------------------------------


def _require_str(table: dict, key: str, where: str) -> str:
    """``table[key]`` as a string: non-empty, except ``replace``, which may be empty (a deletion)."""
    value = table.get(key)
    if not isinstance(value, str) or (key != "replace" and not value):
        msg = f"{where}: '{key}' must be a string" + (" (may be empty)" if key == "replace" else ", not empty")
        raise ValueError(msg)
    return value


def _edit(table: dict, where: str) -> Edit:
    return Edit(*(_require_str(table, key, where) for key in ("file", "find", "replace")))


def load_mutations(path: Path) -> list[Mutation]:
    """Read and validate the mutation list."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    entries = data.get("mutation")
    if not isinstance(entries, list) or not entries:
        msg = f"{path}: expected a non-empty array of [[mutation]] tables"
        raise ValueError(msg)
    mutations, seen = [], set()
    for index, entry in enumerate(entries):
        where = f"{path.name} entry {index + 1} ({entry.get('id', '?')})"
        unknown = set(entry) - {"id", "description", "file", "find", "replace", "tests", "also"}
        if unknown:
            msg = f"{where}: unknown keys {sorted(unknown)}"
            raise ValueError(msg)
        ident = _require_str(entry, "id", where)
        if ident in seen:
            msg = f"{where}: duplicate id {ident!r}"
            raise ValueError(msg)
        seen.add(ident)
        also = entry.get("also", [])
        if not isinstance(also, list) or not all(isinstance(extra, dict) for extra in also):
            msg = f"{where}: 'also' must be an array of tables ([[mutation.also]])"
            raise ValueError(msg)
        edits = [_edit(entry, where), *(_edit(extra, where) for extra in also)]
        for edit in edits:
            if edit.find == edit.replace:
                msg = f"{where}: 'find' and 'replace' are identical in {edit.file}"
                raise ValueError(msg)
        tests = entry.get("tests")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t for t in tests):
            msg = f"{where}: 'tests' must be a non-empty list of pytest node ids or paths"
            raise ValueError(msg)
        mutations.append(Mutation(ident, str(entry.get("description", "")), tuple(edits), tuple(tests)))
    return mutations


def stale_reasons(mutation: Mutation, root: Path) -> list[str]:
    """Why the entry's snippets do not match the tree at ``root`` (empty when every ``find`` occurs exactly once)."""
    reasons = []
    for edit in mutation.edits:
        path = root / edit.file
        if not path.is_file():
            reasons.append(f"{edit.file}: file not found")
            continue
        count = path.read_text(encoding="utf-8").count(edit.find)
        if count != 1:
            reasons.append(f"{edit.file}: 'find' occurs {count} times (expected exactly once)")
    return reasons


def apply_mutation(mutation: Mutation, root: Path) -> list[str]:
    """Apply the edits of ``mutation`` in order to the tree at ``root``; returns why it could not (empty if done).

    Each ``find`` is counted again just before its edit, so an earlier edit of the same entry cannot make a later
    one ambiguous unnoticed.
    """
    for edit in mutation.edits:
        path = root / edit.file
        text = path.read_text(encoding="utf-8")
        count = text.count(edit.find)
        if count != 1:
            return [f"{edit.file}: 'find' occurs {count} times after the entry's earlier edits"]
        path.write_text(text.replace(edit.find, edit.replace, 1), encoding="utf-8")
    return []


def node_path(node_id: str) -> str:
    """The file or folder part of a pytest node id."""
    return node_id.split("::", 1)[0]


# -- copies of the working tree -----------------------------------------------------------------------------------


def tree_files(repo: Path) -> list[str]:
    """Tracked files and untracked files that are not ignored, as repo-relative paths."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.decode("utf-8", errors="surrogateescape")
    files = []
    for name in dict.fromkeys(filter(None, listing.split("\0"))):  # unmerged paths are listed once per stage
        if Path(name).parts[0] in SKIPPED_TOP_LEVEL:
            continue
        files.append(name)
    return files


def snapshot(repo: Path, destination: Path) -> int:
    """Copy the working tree's files into ``destination``; returns how many were copied."""
    copied = 0
    for name in tree_files(repo):
        source = repo / name
        if source.is_symlink() or source.is_file():  # deleted-but-tracked files and submodule folders are skipped
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
            copied += 1
    return copied


def clone(pristine: Path, destination: Path) -> None:
    """A fresh copy of the pristine snapshot (never run in, so no bytecode or test output leaks between runs)."""
    shutil.copytree(pristine, destination, symlinks=True)


# -- running pytest -------------------------------------------------------------------------------------------------


@dataclass
class PytestRun:
    """Exit code, combined output and timing of one pytest run."""

    returncode: int | None  # None: timed out
    output: str
    seconds: float
    report: dict
    """What the guard plugin recorded: ``modules`` (name -> file) and ``import_error``; empty if it did not run."""

    @property
    def imported(self) -> dict[str, str | None]:
        """Modules of the package loaded in the pytest process, with their files."""
        return self.report.get("modules", {})


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the process group of ``process`` (pytest and everything it started) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_pytest(
    python: str, copy: Path, tests: list[str], guard_dir: Path, timeout: float, log: Path, deselect: list[str]
) -> PytestRun:
    """Run ``tests`` in ``copy`` with the copy first on ``PYTHONPATH``; kill the whole process group on timeout.

    ``deselect`` (node id prefixes) are passed to pytest's ``--deselect``.
    """
    report = log.with_suffix(".imports.json")
    report.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), str(guard_dir), env.get("PYTHONPATH")]))
    env[GUARD_ENV] = str(report)
    env.setdefault(REFERENCE_ENV, str(REPO.parent / "shared" / "fixtures" / "reference"))  # the copy has no shared/
    env.pop("PYTEST_ADDOPTS", None)
    command = [python, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-p", GUARD_MODULE]
    command += [option for node in deselect for option in ("--deselect", node)] + tests
    start = time.monotonic()
    with log.open("w", encoding="utf-8") as output:
        output.write(f"$ cd {copy} && PYTHONPATH={env['PYTHONPATH']} {' '.join(command)}\n\n")
        output.flush()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter running pytest
            command, cwd=copy, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
            _kill_group(process)
        except BaseException:  # Ctrl-C: the run's own session does not get the terminal's SIGINT
            _kill_group(process)
            raise
    seconds = time.monotonic() - start
    recorded = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    return PytestRun(returncode, log.read_text(encoding="utf-8", errors="replace"), seconds, recorded)


def check_shadowing(run: PytestRun, copy: Path) -> None:
    """Raise :class:`ShadowingError` unless every imported module of the package lies inside ``copy``.

    A run that stopped before the guard could report, or whose package import was broken by the mutation, is not
    a shadowing failure: it tested nothing from outside the copy.
    """
    if not run.report:
        if run.returncode in (0, 1):
            msg = f"the guard plugin wrote no report, so where {PACKAGE} came from is unknown"
            raise ShadowingError(msg)
        return
    root = copy.resolve()
    outside = {
        name: file
        for name, file in run.imported.items()
        if file is None or not Path(file).resolve().is_relative_to(root)
    }
    if outside:
        msg = f"modules of {PACKAGE} were imported from outside the copy {copy}: {outside}"
        raise ShadowingError(msg)
    if PACKAGE not in run.imported and not run.report.get("import_error"):
        msg = f"{PACKAGE} was not imported by the test process"
        raise ShadowingError(msg)


FAILURE_LINE = re.compile(r"^(FAILED|ERROR) (\S+)")
COLLECTION_ERRORS = re.compile(r"errors? during collection|^ERROR collecting ", re.MULTILINE)


def first_failure(output: str) -> str:
    """The first failing or erroring test named in pytest's short summary."""
    for line in output.splitlines():
        match = FAILURE_LINE.match(line)
        if match:
            return match.group(2)
    for line in output.splitlines():
        if line.startswith("ERROR"):
            return line.strip()
    return ""


def tail(text: str, lines: int = 20) -> str:
    """The last lines of ``text``, indented."""
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


def failure_excerpt(output: str, lines: int = 25) -> str:
    """The ``E`` lines of pytest's report (the assertion or exception), then the summary lines, indented."""
    errors = [line for line in output.splitlines() if line.startswith("E ")][:lines]
    summary = [
        line for line in output.splitlines() if line.startswith(("FAILED", "ERROR")) or re.search(r" in [0-9.]+s", line)
    ]
    return "\n".join("    " + line for line in [*errors, *summary]) or tail(output)


def classify(run: PytestRun) -> Outcome:
    """Turn a mutant's pytest run into an outcome."""
    code, output = run.returncode, run.output
    if code is None:
        return Outcome(KILLED_TIMEOUT, run.seconds, first_failure(output) or "(no test had failed yet)")
    if code == 0:
        return Outcome(SURVIVED, run.seconds)
    if code == 1:
        return Outcome(KILLED, run.seconds, first_failure(output))
    if code == 2:
        if COLLECTION_ERRORS.search(output):
            return Outcome(KILLED_COLLECTION, run.seconds, first_failure(output))
        return Outcome(ERROR, run.seconds, "pytest was interrupted (exit 2) without a collection error")
    if code == 3:
        return Outcome(ERROR, run.seconds, "pytest internal error (exit 3)")
    if code == 4:
        return Outcome(ERROR, run.seconds, "pytest usage error (exit 4): check the entry's 'tests'")
    if code == 5:
        return Outcome(ERROR, run.seconds, "no tests were collected (exit 5)")
    return Outcome(f"{KILLED} (crash, exit {code})", run.seconds, first_failure(output))


# -- the run ----------------------------------------------------------------------------------------------------


def usable_tests(mutation: Mutation, root: Path) -> tuple[list[str], list[str]]:
    """The entry's tests whose file or folder exists in the tree at ``root``, and the missing ones."""
    present = [test for test in mutation.tests if (root / node_path(test)).exists()]
    missing = [test for test in mutation.tests if test not in present]
    return present, missing


def excluded(test: str, exclusions: list[str]) -> bool:
    """Whether ``test`` is one of ``exclusions`` or lies inside one of them (a folder, file or class)."""
    return any(test == other or test.startswith((other.rstrip("/") + "/", other + "::")) for other in exclusions)


def _skipped(missing: list[str], left_out: list[str]) -> str:
    """Which of an entry's tests are not run, and why."""
    parts = [f"missing {' '.join(missing)}" if missing else "", f"excluded {' '.join(left_out)}" if left_out else ""]
    return "; ".join(filter(None, parts))


def union(tests: list[str]) -> list[str]:
    """Tests in first-seen order, without duplicates or ids already covered by a listed file or folder."""
    unique = list(dict.fromkeys(tests))
    whole = [Path(test) for test in unique if "::" not in test]

    def covered(test: str) -> bool:
        path = Path(node_path(test))
        return any(other in path.parents or (other == path and "::" in test) for other in whole)

    return [test for test in unique if not covered(test)]


def print_table(mutations: list[Mutation], outcomes: dict[str, Outcome]) -> None:
    """The final table: id | status | seconds | first failing test (or why not run)."""
    rows = [("id", "status", "seconds", "first failing test / detail")]
    for mutation in mutations:
        outcome = outcomes[mutation.id]
        detail = "; ".join(filter(None, [outcome.detail, *outcome.notes]))
        seconds = f"{outcome.seconds:.1f}" if outcome.seconds else "-"
        rows.append((mutation.id, outcome.status, seconds, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for index, row in enumerate(rows):
        print(" | ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]))
        if index == 0:
            print("-+-".join(["-" * width for width in widths] + ["-" * 30]))


def list_entries(mutations: list[Mutation]) -> None:
    """``--list``: every entry, whether its snippets match the working tree, and its tests."""
    for mutation in mutations:
        reasons = stale_reasons(mutation, REPO)
        _, missing = usable_tests(mutation, REPO)
        state = f"{STALE}: {'; '.join(reasons)}" if reasons else "ok"
        print(f"{mutation.id}  [{state}]")
        print(f"    {mutation.description}")
        print(f"    file: {', '.join(dict.fromkeys(edit.file for edit in mutation.edits))}")
        print(f"    tests: {' '.join(mutation.tests)}" + (f"  (missing: {' '.join(missing)})" if missing else ""))


def module_name(path: str) -> str | None:
    """Dotted module name of a package source file, else ``None``."""
    parts = Path(path).with_suffix("").parts
    if not path.endswith(".py") or parts[0] != PACKAGE:
        return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def default_python() -> str:
    """This interpreter when it runs in a virtual environment (``make mutants``), else the repository's ``.venv``."""
    if sys.prefix != sys.base_prefix:
        return sys.executable
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", action="extend", metavar="ID", help="run only these entries")
    parser.add_argument("--list", action="store_true", help="list the entries and whether they still match")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds per mutant's pytest run; the baseline gets this times the entry count (default: %(default)s)",
    )
    parser.add_argument(
        "--exclude-tests",
        nargs="+",
        action="extend",
        default=[],
        metavar="TEST",
        help="leave these tests (paths or node ids, and what lies inside them) out of every run (pytest --deselect), "
        "e.g. a test that fails on the unmutated tree for now",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies and logs")
    parser.add_argument("--mutations", type=Path, default=MUTATIONS_FILE, help="mutation list (default: %(default)s)")
    parser.add_argument("--python", default=None, help="interpreter that runs pytest (default: the venv's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one linear procedure
    """Run the selected mutants; see the module docstring."""
    args = parse_arguments(argv)
    try:
        mutations = load_mutations(args.mutations)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        print(f"mutants: cannot read the mutation list: {error}", file=sys.stderr)
        return 2
    if args.list:
        list_entries(mutations)
        return 0
    if args.only:
        known = {m.id for m in mutations}
        unknown = [ident for ident in args.only if ident not in known]
        if unknown:
            print(f"mutants: unknown id(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.id in set(args.only)]
    python = args.python or default_python()

    work = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        pristine = work / "pristine"
        count = snapshot(REPO, pristine)
        guard_dir = work / "guard"
        guard_dir.mkdir()
        (guard_dir / f"{GUARD_MODULE}.py").write_text(GUARD_SOURCE, encoding="utf-8")
        logs = work / "logs"
        logs.mkdir()
        print(f"mutants: snapshot of {count} files in {pristine}; python {python}", flush=True)

        outcomes: dict[str, Outcome] = {}
        runnable: list[tuple[Mutation, list[str]]] = []
        for mutation in mutations:
            reasons = stale_reasons(mutation, pristine)
            present, missing = usable_tests(mutation, pristine)
            left_out = [test for test in present if excluded(test, args.exclude_tests)]
            present = [test for test in present if test not in left_out]
            if reasons:
                outcomes[mutation.id] = Outcome(STALE, detail="; ".join(reasons))
            elif not present:
                outcomes[mutation.id] = Outcome(ERROR, detail=f"no test left to run ({_skipped(missing, left_out)})")
            else:
                notes = [f"not run: {_skipped(missing, left_out)}"] if missing or left_out else []
                outcomes[mutation.id] = Outcome("pending", notes=notes)
                runnable.append((mutation, present))

        if runnable:
            baseline_tests = union([test for _, tests in runnable for test in tests])
            print(f"mutants: baseline (unmutated): {' '.join(baseline_tests)}", flush=True)
            copy = work / "baseline"
            clone(pristine, copy)
            baseline_timeout = args.timeout * len(runnable)  # the union of the tests: at most every entry's run
            run = run_pytest(
                python, copy, baseline_tests, guard_dir, baseline_timeout, logs / "baseline.log", args.exclude_tests
            )
            check_shadowing(run, copy)
            if run.returncode != 0:
                why = "timed out" if run.returncode is None else f"failed (pytest exit {run.returncode})"
                where = f"Full log: {logs / 'baseline.log'}" if args.keep else "--keep keeps the full log."
                print(
                    f"mutants: the baseline {why} after {run.seconds:.0f} s: the listed tests must pass on the "
                    "unmutated tree before a failure can count as a kill (--exclude-tests leaves a test out). "
                    f"{where}\n{failure_excerpt(run.output)}",
                    file=sys.stderr,
                )
                return 2
            imported = sorted(run.imported)
            print(
                f"mutants: baseline passed in {run.seconds:.1f} s; {PACKAGE} imported from the copy "
                f"({run.imported[PACKAGE]}, {len(imported)} modules, all inside the copy)",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(copy)

        for position, (mutation, tests) in enumerate(runnable, 1):
            print(f"[{position}/{len(runnable)}] {mutation.id}: {mutation.description} ...", end=" ", flush=True)
            copy = work / mutation.id
            clone(pristine, copy)
            problems = apply_mutation(mutation, copy)
            if problems:
                outcomes[mutation.id] = Outcome(STALE, detail="; ".join(problems))
                print(STALE, flush=True)
                continue
            run = run_pytest(
                python, copy, tests, guard_dir, args.timeout, logs / f"{mutation.id}.log", args.exclude_tests
            )
            check_shadowing(run, copy)
            outcome = classify(run)
            outcome.notes = outcomes[mutation.id].notes
            mutated_modules = {module_name(edit.file) for edit in mutation.edits} - {None}
            if outcome.status == SURVIVED and run.imported and not mutated_modules & set(run.imported):
                outcome.notes.append("the mutated module was never imported by the test process")
            outcomes[mutation.id] = outcome
            print(f"{outcome.status} ({outcome.seconds:.1f} s) {outcome.detail}".rstrip(), flush=True)
            if outcome.status == ERROR:
                print(tail(run.output), flush=True)
            if not args.keep:
                shutil.rmtree(copy)
    except ShadowingError as error:
        print(f"mutants: SHADOWING FAILED: {error}", file=sys.stderr)
        return 3
    finally:
        if args.keep:
            print(f"mutants: kept copies and logs in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print_table(mutations, outcomes)
    killed = sum(outcome.killed for outcome in outcomes.values())
    print(f"\n{killed}/{len(mutations)} killed")
    return 0 if killed == len(mutations) else 1


if __name__ == "__main__":
    sys.exit(main())
