"""Real processes for end-to-end tests: the simulator CLI, the Dagster webserver and daemon.

Every process starts in its own process group and is stopped by that id (its run workers and
code servers included), also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import httpx

from d23_pipeline import backfill
from d23_pipeline.simulator import SimulatorConfig

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy, or fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(every_s)


def stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop a process started by :func:`spawn` and everything it started, by its group id."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    # Children (code servers, run workers) may outlive a leader that exited on its own.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


@contextlib.contextmanager
def spawn(
    args: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """Run ``args`` in a new process group, output to ``log``; stop it on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process)


def tail(log: Path, lines: int = 40) -> str:
    """The end of a process log, for failure messages."""
    if not log.exists():
        return f"(no log at {log})"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def simulator_process(config: SimulatorConfig, log: Path) -> Iterator[str]:
    """``python -m d23_pipeline.simulator`` on a free port; yields its base URL."""
    args = [
        sys.executable,
        "-m",
        "d23_pipeline.simulator",
        "--port",
        "0",
        "--seed",
        str(config.seed),
        "--months",
        ",".join(config.months),
        "--rows-per-month",
        str(config.rows_per_month),
    ]
    with spawn(args, os.environ, log) as process:
        first_line = wait_for(
            "the simulator printing its URL",
            lambda: process.poll() is None and log.read_text().partition("\n")[1] and log,
            timeout_s=60,
            every_s=0.1,
        )
        yield first_line.read_text().splitlines()[0].strip()


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the shell's D23_* and DAGSTER_* settings, plus
    ``settings``: a product process a test starts sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D23_", "DAGSTER_"))}
    return env | settings


def run_python(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """``python ARGS`` (this interpreter) with ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, *args], env=dict(env), capture_output=True, text=True, timeout=120
    )


def pipeline_env(
    *, api_url: str, sim: SimulatorConfig, data_dir: Path, dagster_home: Path | None = None
) -> dict[str, str]:
    """The environment a Dagster process of the product gets, pointed at a simulator."""
    env = clean_env()
    env.update(
        D23_API_URL=api_url,
        D23_LENDER=sim.lender_slug,
        D23_EMAIL=sim.email,
        D23_PASSWORD=sim.password,
        D23_DATA_DIR=str(data_dir),
        D23_START_MONTH=sim.months[0],
        PYTHONUNBUFFERED="1",
    )
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def make_dagster_home(
    path: Path, config: str | None = None, template: str = "dagster.yaml"
) -> Path:
    """A Dagster home holding one of the product's instance files, d23_pipeline/deploy/TEMPLATE,
    as its dagster.yaml (or ``config``)."""
    path.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("d23_pipeline.deploy") / template
    (path / "dagster.yaml").write_text(shipped.read_text() if config is None else config)
    return path


def dagster_cli(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """Run ``dagster ARGS`` from the repository root and fail loudly if it fails."""
    result = subprocess.run(
        [str(BIN / "dagster"), *args],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"dagster {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


# A module each step of the pipeline imports when it runs: landing, merge, outcome mix, dashboard.
STEP_MODULES = {
    "d23_pipeline.landing.snapshot",
    "d23_pipeline.warehouse.store",
    "d23_pipeline.analytics.outcome_mix",
    "d23_pipeline.analytics.dashboard",
}


def materialize_logging_imports(
    sim: SimulatorConfig, partition: str, scratch: Path
) -> tuple[set[str], str]:
    """``dagster asset materialize --select '*'`` of ``partition`` (``YYYY-MM-01``) against a
    simulator of ``sim``, data under ``scratch / "data"``: the modules the run's process
    imported (Python's own log, ``PYTHONPROFILEIMPORTTIME``; a refused import is logged too, by
    its name alone), and its stderr."""
    with simulator_process(sim, scratch / "simulator.log") as url:
        env = pipeline_env(api_url=url, sim=sim, data_dir=scratch / "data")
        env["PYTHONPROFILEIMPORTTIME"] = "1"
        args = ["asset", "materialize", "-m", "d23_pipeline.definitions", "--select", "*"]
        result = dagster_cli([*args, "--partition", partition], env)
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    return imported, result.stderr


@dataclass
class Webserver:
    """A running ``dagster-webserver`` and its GraphQL endpoint."""

    url: str

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL document the way the backfill CLI does; raise on any error."""
        return backfill.graphql(self.url, query, dict(variables or {}))


@contextlib.contextmanager
def webserver_process(env: Mapping[str, str], log: Path) -> Iterator[Webserver]:
    """``dagster-webserver -w workspace.yaml`` on a free loopback port, once it is serving."""
    port = free_port()
    args = [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1"]
    with spawn([*args, "-p", str(port)], env, log) as process:
        server = Webserver(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"dagster-webserver exited:\n{tail(log)}")
            try:
                return httpx.get(f"{server.url}/server_info", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("dagster-webserver answering", ready, timeout_s=90)
        yield server


@contextlib.contextmanager
def daemon_process(env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run -w workspace.yaml``, polling backfills every 3 s (quick_daemon.py)."""
    daemon = [sys.executable, str(Path(__file__).with_name("quick_daemon.py"))]
    with spawn([*daemon, "run", "-w", "workspace.yaml"], env, log) as process:
        yield process
