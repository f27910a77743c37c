"""Fault injection for `hpsearch optimize --workers 2`: does a search survive losing a process?

For each case (an engine x a storage x a fault kind, round-robin over a seeded shuffle of all
of them) this script

1. starts `hpsearch optimize --study <one-run copy> --name <unique> --trials N --workers 2
   --engine E --storage URL` in its own process group (as a shell runs a foreground job),
   its stdout and stderr in one file;
2. waits until the study has started trials (it reads the storage's tables), then at a seeded
   random moment injects ONE fault:
   - `kill-worker`: SIGKILL to one of the command's worker processes,
   - `kill-parent`: SIGKILL to the command itself,
   - `sigint`: SIGINT to the whole process group, as Ctrl-C in a terminal sends it,
   - `sigterm`: SIGTERM to the command only, as `kill PID` sends it;
3. waits for the command to end (a hang: not within `--limit` seconds; its process group is
   then killed), and checks that every process of its group (workers, multiprocessing's
   resource tracker) is gone within a few seconds (after `kill-parent`: that the workers
   die with their parent);
4. re-runs the same command to completion (a hang again if not within `--limit`), timed: a
   trial its dead worker left RUNNING is failed by the heartbeat check after about 30 s;
5. checks what the README promises: exactly N finished trials (complete + pruned, diverged
   being stored as pruned), none left RUNNING, every finished trial's intermediate values are
   steps 1..k without a gap (all epochs for a complete one), no "Traceback" in either output,
   every error line is one `Error: ...` line, and the exit codes (kill-worker: 0, the command
   goes on; kill-parent: -9; sigint and sigterm: 130, "stops cleanly"; the re-run: 0).
   Python warnings printed (multiprocessing's resource tracker after kill-parent) are
   counted and listed, not failed.

Everything a case started is killed by process group at its end; the temporary folder (study
file, SQLite file, outputs) is removed and the `faults_<pid>_*` databases it created on
PostgreSQL and MariaDB are dropped at the end of the run. At the end it prints a markdown table
(per engine x storage x fault kind: injected, survived, hangs, lost trials, tracebacks), the
exit codes and re-run times seen per fault kind, and every failed case with the first lines of
its outputs; the exit status is 1 if any case failed. `--jobs J` runs J cases at once (each
case's draws are seeded by `--seed` and its index, whatever J); on a busy 2-core machine a
case takes about a minute (most of it the three processes of each command importing torch),
so give `--limit` room when J > 1.

    .venv/bin/python scripts/faults.py --faults 8                      # a smoke run
    .venv/bin/python scripts/faults.py --faults 100 --seed 1 --jobs 3 --limit 240
    .venv/bin/python scripts/faults.py --faults 12 --storages sqlite --engines cohort \\
        --kinds kill-worker sigterm --limit 90
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
HPSEARCH = Path(sys.executable).with_name("hpsearch")
ENGINES = ("reference", "cohort")
STORAGES = ("sqlite", "postgresql", "mariadb")
KINDS = ("kill-worker", "kill-parent", "sigint", "sigterm")
EXPECTED_EXIT = {"kill-worker": 0, "kill-parent": -signal.SIGKILL, "sigint": 130,
                 "sigterm": 130}
# Trials per case, and the seconds after the first trial started within which the fault
# lands: a cohort trains its trials together, so it needs more of them for a few seconds.
TRIALS = {"reference": 12, "cohort": 60}
WINDOW_S = {"reference": 3.0, "cohort": 1.0}
SERVERS = {  # storage -> (admin URL, URL of a database named {db})
    "postgresql": ("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                   "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test",
                "mysql+pymysql://root@127.0.0.1:3306/{db}"),
}
GONE_LIMIT_S = 10.0  # a process group's processes must be gone this long after its command
GONE_WAIT_S = 60.0  # how long we watch them (to tell slow from never), then kill them
POLL_S = 0.2
DB_POLL_S = 0.5
FINISHED = ("COMPLETE", "PRUNED")
EXCERPT_LINES = 8
# The process groups of the commands running now, and whether this script is stopping (Ctrl-C).
LIVE: set[int] = set()
STOPPING = threading.Event()


@dataclass
class Case:
    index: int
    engine: str
    storage: str
    kind: str
    name: str
    url: str
    trials: int


@dataclass
class CaseResult:
    case: Case
    injected: bool = False
    first_trial_s: float = 0.0  # seconds from the start to the first started trial
    fault_at_s: float = 0.0  # seconds after the first trial started
    fault_exit: int | None = None  # None: a hang
    fault_s: float = 0.0
    gone_s: float | None = None  # how long the group's processes outlived the command
    rerun_exit: int | None = None
    rerun_s: float = 0.0
    hangs: int = 0
    lost: int = 0  # finished trials missing, plus trials left RUNNING
    tracebacks: int = 0
    warnings: list[str] = field(default_factory=list)  # Python warnings printed: not failures
    problems: list[str] = field(default_factory=list)
    excerpts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def survived(self) -> bool:
        return self.injected and not self.problems


# --- processes ---------------------------------------------------------------------------

Process = tuple[int, str]  # (pid, start time): a pid cannot be confused with a reused one


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (field 3, the state, first)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def identify(pid: int) -> Process | None:
    fields = _stat(pid)
    return (pid, fields[19]) if fields else None


def alive(process: Process) -> bool:
    fields = _stat(process[0])
    return bool(fields) and fields[19] == process[1] and fields[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in path.read_text().split()]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def workers(pid: int) -> list[Process]:
    """The command's live worker processes (multiprocessing's spawned children, not its
    resource tracker)."""
    found = [identify(child) for child in children(pid) if "spawn_main" in cmdline(child)]
    return [process for process in found if process and alive(process)]


def group_members(pgid: int) -> list[Process]:
    """Live processes of the process group `pgid` (all started by one command of ours)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append((int(entry.name), fields[19]))
    return found


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def wait_gone(processes: list[Process], limit_s: float) -> float | None:
    """Seconds until none of `processes` is alive, None if some still are after `limit_s`."""
    start = time.monotonic()
    while any(alive(process) for process in processes):
        if time.monotonic() - start > limit_s:
            return None
        time.sleep(POLL_S)
    return time.monotonic() - start


def start(command: list[str], output: Path, cwd: Path,
          source: Path | None) -> subprocess.Popen[bytes]:
    if STOPPING.is_set():
        raise KeyboardInterrupt
    env = dict(os.environ)
    if source:  # ahead of the editable install's finder, in the workers too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    with output.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    LIVE.add(process.pid)
    return process


def finish(process: subprocess.Popen[bytes]) -> None:
    """Kill whatever is left of the command's process group."""
    kill_group(process.pid)
    process.wait()
    LIVE.discard(process.pid)


def wait_end(process: subprocess.Popen[bytes], started: float,
             limit_s: float) -> tuple[int | None, float]:
    """The exit code (None: a hang, then the group is killed) and the seconds since
    `started`."""
    try:
        code: int | None = process.wait(timeout=max(0.0, started + limit_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
        kill_group(process.pid)
        process.wait()
    return code, time.monotonic() - started


# --- storages ----------------------------------------------------------------------------

@contextlib.contextmanager
def storages(kinds: list[str], folder: Path) -> Iterator[dict[str, str]]:
    """A URL per storage kind: a SQLite file in `folder`, a new database on each server
    (dropped on exit)."""
    urls = {"sqlite": f"sqlite:///{folder / 'faults.db'}"} if "sqlite" in kinds else {}
    created: list[tuple[str, str]] = []
    try:
        for kind in kinds:
            if kind in SERVERS:
                admin, template = SERVERS[kind]
                database = f"faults_{os.getpid()}_{kind}"
                _admin(admin, f"CREATE DATABASE {database}")
                created.append((kind, database))
                urls[kind] = template.format(db=database)
        yield urls
    finally:
        for kind, database in created:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                _admin(SERVERS[kind][0], f"DROP DATABASE IF EXISTS {database}{force}")


def _admin(url: str, statement: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


STATES_SQL = sa.text("SELECT t.state, COUNT(*) FROM trials t JOIN studies s "
                     "ON s.study_id = t.study_id WHERE s.study_name = :name GROUP BY t.state")


def trial_states(engine: sa.Engine, url: str, name: str) -> Counter[str]:
    """The study's trial counts by state, read with plain SQL (creating nothing); empty before
    the command created its tables and study."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return Counter()
    try:
        with engine.connect() as connection:
            rows = connection.execute(STATES_SQL, {"name": name}).all()
    except sa.exc.SQLAlchemyError:
        return Counter()
    return Counter({getattr(state, "name", str(state)): count for state, count in rows})


# --- one case ----------------------------------------------------------------------------

def inject(process: subprocess.Popen[bytes], case: Case, result: CaseResult,
           rng: random.Random, window_s: float, limit_s: float, started: float) -> list[Process]:
    """Wait for the first started trial, then `uniform(0, window_s)` seconds, then inject the
    case's fault (unless the command ended first). Returns the workers alive just before."""
    delay = rng.uniform(0.0, window_s)
    engine = sa.create_engine(case.url, poolclass=NullPool)
    try:
        while sum(trial_states(engine, case.url, case.name).values()) == 0:
            if process.poll() is not None or time.monotonic() - started > limit_s:
                return []
            time.sleep(DB_POLL_S)
    finally:
        engine.dispose()
    first_trial = time.monotonic()
    result.first_trial_s = first_trial - started
    while time.monotonic() - first_trial < delay and process.poll() is None:
        time.sleep(min(POLL_S, delay))
    victims = workers(process.pid)
    if process.poll() is not None or not victims:
        return []
    if case.kind == "kill-worker":
        os.kill(rng.choice(victims)[0], signal.SIGKILL)
    elif case.kind == "kill-parent":
        os.kill(process.pid, signal.SIGKILL)
    elif case.kind == "sigint":
        os.killpg(process.pid, signal.SIGINT)
    elif case.kind == "sigterm":
        os.kill(process.pid, signal.SIGTERM)
    result.injected = True
    result.fault_at_s = time.monotonic() - first_trial
    return victims


def check_study(case: Case, result: CaseResult, epochs: int) -> None:
    """Exactly N finished trials, none RUNNING, every finished trial's curve without gaps."""
    storage = optuna.storages.RDBStorage(case.url, skip_table_creation=True)
    try:
        trials = optuna.load_study(study_name=case.name, storage=storage).get_trials(
            deepcopy=False)
    finally:
        storage.engine.dispose()
    states = Counter(trial.state.name for trial in trials)
    finished = sum(states[state] for state in FINISHED)
    result.lost = max(0, case.trials - finished) + states["RUNNING"]
    if finished != case.trials or states["RUNNING"]:
        result.problems.append(f"{finished} of {case.trials} finished, states {dict(states)}")
    for trial in trials:
        if trial.state.name not in FINISHED:
            continue
        steps = sorted(trial.intermediate_values)
        complete_ok = trial.state.name != "COMPLETE" or len(steps) == epochs
        if not steps or steps != list(range(1, len(steps) + 1)) or not complete_ok:
            result.problems.append(f"trial {trial.number} ({trial.state.name}): "
                                   f"intermediate values at {_ranges(steps)}")


def _ranges(steps: list[int]) -> str:
    return f"{steps[0]}..{steps[-1]} ({len(steps)} steps)" if steps else "none"


ERROR_WORD = re.compile(r"\w*(Error|Exception)\b")
WARNING_WORD = re.compile(r"\b\w+Warning: .*")


def check_output(label: str, text: str, result: CaseResult) -> None:
    """No traceback, and every line that names an error is one `Error: ...` line."""
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    bad = [line for line in lines if ERROR_WORD.search(line) and not line.startswith("Error: ")]
    if "Traceback" in text:
        result.tracebacks += 1
        result.problems.append(f"{label}: Traceback")
    elif bad:
        result.problems.append(f"{label}: an error not on one 'Error:' line: {bad[0][:200]}")
    result.warnings += [re.sub(r"\d+", "N", found.group(0))[:160]
                        for found in map(WARNING_WORD.search, lines) if found]
    interesting = [line for line in lines if "%|" not in line] or lines
    result.excerpts[label] = [line[:200] for line in interesting[:EXCERPT_LINES]]


def run_case(case: Case, rng: random.Random, folder: Path, study: Path, epochs: int,
             window_s: float, limit_s: float, source: Path | None) -> CaseResult:
    result = CaseResult(case)
    command = [str(HPSEARCH), "optimize", "--study", str(study), "--name", case.name,
               "--trials", str(case.trials), "--workers", "2", "--engine", case.engine,
               "--storage", case.url]
    outputs = {label: folder / f"{case.name}.{label}.log" for label in ("fault", "rerun")}
    started = time.monotonic()
    first = start(command, outputs["fault"], folder, source)
    try:
        victims = inject(first, case, result, rng, window_s, limit_s, started)
        result.fault_exit, result.fault_s = wait_end(first, started, limit_s)
        # after kill-parent the workers must die with it; after any end, nothing may stay
        left = list(dict.fromkeys(victims + group_members(first.pid)))
        result.gone_s = wait_gone(left, GONE_WAIT_S)
        if result.gone_s is None or result.gone_s > GONE_LIMIT_S:
            after = "still" if result.gone_s is None else f"{result.gone_s:.0f} s"
            result.problems.append(f"fault run: processes alive {GONE_LIMIT_S:.0f} s after the "
                                   f"command ended ({after}): {left}")
    finally:
        finish(first)
    if not result.injected:
        return result
    started = time.monotonic()
    second = start(command, outputs["rerun"], folder, source)
    try:
        result.rerun_exit, result.rerun_s = wait_end(second, started, limit_s)
        if wait_gone(group_members(second.pid), GONE_LIMIT_S) is None:
            result.problems.append("re-run: processes alive after the command ended")
    finally:
        finish(second)
    for label, code, expected in (("fault run", result.fault_exit, EXPECTED_EXIT[case.kind]),
                                  ("re-run", result.rerun_exit, 0)):
        if code is None:
            result.hangs += 1
            result.problems.append(f"{label}: hang (no end within {limit_s:.0f} s)")
        elif code != expected:
            result.problems.append(f"{label}: exit {code}, expected {expected}")
    check_output("fault run", outputs["fault"].read_text(errors="replace"), result)
    check_output("re-run", outputs["rerun"].read_text(errors="replace"), result)
    try:
        check_study(case, result, epochs)
    except Exception as error:  # a study Optuna cannot read is a failure, not a crash
        result.problems.append(f"study unreadable: {type(error).__name__}: {error}")
    return result


# --- the run -----------------------------------------------------------------------------

def one_run_study(name: str, folder: Path) -> tuple[Path, int]:
    """A copy of studies/NAME.toml without its [evaluation] table (one run per trial, about
    ten times faster for wine), pruned by the median pruner where it uses the paired one (which
    needs several runs a trial), and its number of epochs."""
    text = (ROOT / "studies" / f"{name}.toml").read_text()
    text = re.split(r"^\[evaluation\]", text, flags=re.MULTILINE)[0]
    text = re.sub(r'^kind = "paired"', 'kind = "median"', text, flags=re.MULTILINE)
    epochs = int(re.search(r"^epochs\s*=\s*(\d+)", text, flags=re.MULTILINE).group(1))
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path, epochs


def run_attempts(case: Case, seed: int, folder: Path, study: Path, epochs: int,
                 limit_s: float, source: Path | None) -> list[CaseResult]:
    """The case, again (at most 3 times) while its command ended before the fault."""
    rng = random.Random(f"{seed}-{case.index}")  # the same draws whatever --jobs
    results = []
    for attempt in range(3):
        if attempt:
            case.name += "r"
        results.append(run_case(case, rng, folder, study, epochs, WINDOW_S[case.engine],
                                limit_s, source))
        if results[-1].injected:
            break
    return results


def snapshot(rev: str, folder: Path) -> Path:
    """The hpsearch package as committed at `rev`, extracted under `folder`."""
    source = folder / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "hpsearch"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return source


def plan(args: argparse.Namespace, urls: dict[str, str], rng: random.Random) -> list[Case]:
    """`--faults` cases, round-robin over a seeded shuffle of engine x storage x kind."""
    combos = list(itertools.product(args.engines, args.storages, args.kinds))
    rng.shuffle(combos)
    cases = []
    for index, (engine, storage, kind) in zip(range(args.faults), itertools.cycle(combos)):
        name = f"f{index:03d}_{engine}_{storage}_{kind}".replace("-", "_")
        cases.append(Case(index, engine, storage, kind, name, urls[storage], TRIALS[engine]))
    return cases


def describe(result: CaseResult) -> str:
    case = result.case
    if not result.injected:
        return f"#{case.index} {case.engine} {case.storage} {case.kind}: not injected (ended first)"
    verdict = "ok" if result.survived else "FAILED: " + "; ".join(result.problems)
    gone = "-" if result.gone_s is None else f"{result.gone_s:.1f}"
    return (f"#{case.index} {case.engine} {case.storage} {case.kind} at {result.first_trial_s:.1f}"
            f"+{result.fault_at_s:.1f}s: "
            f"exit {result.fault_exit} after {result.fault_s:.1f}s, gone {gone}s, re-run exit "
            f"{result.rerun_exit} in {result.rerun_s:.1f}s: {verdict}")


def report(results: list[CaseResult]) -> str:
    injected = [result for result in results if result.injected]
    lines = ["| engine | storage | fault | injected | survived | hangs | lost trials "
             "| tracebacks | warned |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str, str], list[CaseResult]] = {}
    for result in injected:
        groups.setdefault((result.case.engine, result.case.storage, result.case.kind),
                          []).append(result)
    for key in sorted(groups):
        group = groups[key]
        lines.append(f"| {' | '.join(key)} | {len(group)} | "
                     f"{sum(r.survived for r in group)} | {sum(r.hangs for r in group)} | "
                     f"{sum(r.lost for r in group)} | {sum(r.tracebacks for r in group)} | "
                     f"{sum(bool(r.warnings) for r in group)} |")
    lines.append(f"| **all** | | | {len(injected)} | {sum(r.survived for r in injected)} | "
                 f"{sum(r.hangs for r in injected)} | {sum(r.lost for r in injected)} | "
                 f"{sum(r.tracebacks for r in injected)} | "
                 f"{sum(bool(r.warnings) for r in injected)} |")
    lines += ["", "| fault | exit codes (fault run) | fault run s (median, max) | "
              "re-run s (min / median / max) |", "|---|---|---|---|"]
    for kind in sorted({result.case.kind for result in injected}):
        group = [result for result in injected if result.case.kind == kind]
        codes = Counter("hang" if r.fault_exit is None else str(r.fault_exit) for r in group)
        fault_s = [r.fault_s for r in group]
        rerun_s = sorted(r.rerun_s for r in group)
        lines.append(f"| {kind} | {', '.join(f'{c} x{n}' for c, n in sorted(codes.items()))} | "
                     f"{statistics.median(fault_s):.1f}, {max(fault_s):.1f} | "
                     f"{rerun_s[0]:.1f} / {statistics.median(rerun_s):.1f} / {rerun_s[-1]:.1f} |")
    warned = Counter((r.case.kind, line) for r in injected for line in set(r.warnings))
    if warned:
        lines += ["", "Warnings printed (cases; not counted as failures):"]
        lines += [f"- {kind}: {line} (x{n})" for (kind, line), n in sorted(warned.items())]
    skipped = len(results) - len(injected)
    if skipped:
        lines += ["", f"{skipped} case(s) ended before the fault and were retried."]
    failures = [result for result in injected if not result.survived]
    lines += ["", f"## Failures ({len(failures)})"]
    for result in failures:
        lines += ["", describe(result)]
        for label, excerpt in result.excerpts.items():
            lines += [f"  {label} output:"] + [f"    {line}" for line in excerpt]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=24, help="faults to inject in total")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--limit", type=float, default=150.0,
                        help="seconds a command may run before it counts as a hang")
    parser.add_argument("--study", default="wine", help="a study in studies/ (run one-run)")
    parser.add_argument("--jobs", type=int, default=1, help="cases run at the same time")
    parser.add_argument("--at", metavar="REV",
                        help="run hpsearch as committed at REV (git archive into the temporary "
                             "folder), not the working tree, which others may be editing")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="hpsearch-faults-"))
    results: list[CaseResult] = []
    began = time.monotonic()
    try:
        study, epochs = one_run_study(args.study, folder)
        source = snapshot(args.at, folder) if args.at else None
        with storages(args.storages, folder) as urls, ThreadPoolExecutor(args.jobs) as pool:
            cases = plan(args, urls, random.Random(args.seed))
            futures = [pool.submit(run_attempts, case, args.seed, folder, study, epochs,
                                   args.limit, source) for case in cases]
            try:
                for future in as_completed(futures):
                    for result in future.result():
                        results.append(result)
                        print(describe(result), flush=True)
            except BaseException:  # Ctrl-C: stop the cases, then the pool can end
                STOPPING.set()
                pool.shutdown(wait=False, cancel_futures=True)
                for pgid in list(LIVE):
                    kill_group(pgid)
                raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\n{time.strftime('%Y-%m-%d %H:%M')}: {len(results)} cases in "
              f"{(time.monotonic() - began) / 60:.1f} min (seed {args.seed})\n", flush=True)
        print(report(results), flush=True)
    return 0 if all(result.survived for result in results if result.injected) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the report of the cases done was printed
        sys.exit(130)
