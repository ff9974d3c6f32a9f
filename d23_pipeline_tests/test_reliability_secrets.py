"""Secrets: runs with a recognisable password and token, failing runs included, leave no trace of
either under the Dagster home, under D23_DATA_DIR or in the captured output."""

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from harness import ExportHookSimulator, Pipeline, failure_messages, files_containing

from d23_pipeline.definitions import defs
from d23_pipeline.simulator import Faults, SimResponse, SimulatorConfig, serve

MONTH = "2026-04"
PASSWORD = "S3CRET-pw-d23-zzqx"
WRONG_PASSWORD = "S3CRET-wrong-pw-d23-qqzx"
# Env vars, as in a deployment: literal values in a resource would be stored in the run's
# job snapshot under DAGSTER_HOME.
SECRETS_FROM_ENV = {
    "password": dg.EnvVar("D23_PASSWORD"),
    "token": dg.EnvVar("D23_TOKEN"),
    "lender_public_id": dg.EnvVar("D23_LENDER_PUBLIC_ID"),
}


class ExpiringSimulator(ExportHookSimulator):
    """Expires every access token each ``expire_every`` export requests (None: never), so a
    login run goes through token refreshes."""

    expire_every: int | None = 15
    _exports = 0

    def on_export(self, path: str, query: Mapping[str, str]) -> tuple[str, SimResponse | None]:
        self._exports += 1
        if self.expire_every and self._exports % self.expire_every == 0:
            self.expire_tokens()
        return path, None


@pytest.fixture
def secret_pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    sim = ExpiringSimulator(SimulatorConfig(months=(MONTH,), rows_per_month=600, password=PASSWORD))
    sim.faults = Faults(error_5xx_rate=0.1, seed=3)  # retries, and their log lines
    with serve(sim) as url:
        yield Pipeline(sim=sim, api_url=url, data_dir=tmp_path / "data")


@contextmanager
def _every_log_line_to_stderr() -> Iterator[None]:
    """Every library log line, ours and httpx's included, to stderr where capfd sees it."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_no_trace_of_password_or_token_after_runs_that_pass_and_fail(
    secret_pipeline: Pipeline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    pipeline = secret_pipeline
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.local_temp(str(home))
    monkeypatch.setenv("D23_LENDER_PUBLIC_ID", pipeline.sim.lender_public_id)
    # A token from the token run's env must not mix into the login runs, and the reverse: blank,
    # not None, which the resource reads from the environment.
    login = {**SECRETS_FROM_ENV, "token": "", "lender_public_id": ""}
    held_token = {**SECRETS_FROM_ENV, "password": ""}

    def run(**api: object) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            list(defs.assets),
            resources=pipeline.resources(retry_base_delay_s=0.001, **api),
            partition_key=f"{MONTH}-01",
            instance=instance,
            raise_on_error=False,
        )

    with _every_log_line_to_stderr():
        monkeypatch.setenv("D23_PASSWORD", PASSWORD)
        assert run(**login).success
        pipeline.sim.expire_every = None
        token = pipeline.login_token()
        monkeypatch.setenv("D23_TOKEN", token)
        assert run(**held_token).success
        pipeline.sim.expire_tokens()
        rejected_token = failure_messages(run(**held_token))
        monkeypatch.setenv("D23_PASSWORD", WRONG_PASSWORD)
        wrong_password = failure_messages(run(**login))
    assert "cannot be refreshed" in rejected_token["d23__raw_logs"]
    assert "login for lender 'demo' refused" in wrong_password["d23__raw_logs"]

    captured = capfd.readouterr()
    needles = _needles(token)
    assert pipeline.sim.stats.by_kind["refresh"] > 0  # the refresh path ran, and was checked
    assert "retrying" in captured.err  # the log lines were captured, and are checked
    assert not [n for n in needles if n in captured.out + captured.err]
    assert list(home.rglob("*.err"))  # compute logs were written, and are checked
    assert files_containing(home, needles) == {}
    assert files_containing(pipeline.data_dir, needles) == {}


def _needles(token: str) -> list[str]:
    # The token's random signature alone too, in case something prints a truncated token.
    return [PASSWORD, WRONG_PASSWORD, token, token.rsplit(".", 1)[-1][:16]]


@pytest.mark.e2e
def test_no_trace_of_the_password_after_a_cli_run(
    secret_pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline = secret_pipeline
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = pipeline.sim.config
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D23_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(home),
        "D23_API_URL": pipeline.api_url,
        "D23_LENDER": config.lender_slug,
        "D23_EMAIL": config.email,
        "D23_PASSWORD": PASSWORD,
        "D23_DATA_DIR": str(pipeline.data_dir),
    }
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        "d23_pipeline.definitions",
        "--select",
        "*",
        "--partition",
        f"{MONTH}-01",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-2000:]
    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    assert PASSWORD not in done.stdout + done.stderr
    assert files_containing(home, [PASSWORD]) == {}
    assert files_containing(pipeline.data_dir, [PASSWORD]) == {}
