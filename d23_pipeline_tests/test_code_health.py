"""Rules for the code itself that no linter here enforces."""

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("d23_pipeline", "d23_pipeline_tests", "benchmarks")
    for path in (REPO / folder).rglob("*.py")
)


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


# A test's run launched from a code location, as the UI and the daemon launch them (the run
# retry daemon retries no other): Dagster has no public constructor for its origin.
PRIVATE_IMPORTS_ALLOWED = {
    # The monitoring daemon's iteration that frees a dead run's pool slots, under the shipped
    # instance settings: Dagster has no public entry point to it.
    "d23_pipeline_tests/test_pools.py: dagster._daemon.monitoring",
    # A sensor tick in the code location the daemon evaluates it in (a run without one is what
    # `dagster asset materialize` makes): no public constructor either.
    "d23_pipeline_tests/test_dashboard_refresh.py: dagster._core.remote_origin",
    "d23_pipeline_tests/test_sensor.py: dagster._core.remote_origin",
    "d23_pipeline_tests/test_sensor.py: dagster._core.types.loadable_target_origin",
    # The end-to-end tests' daemon with a shorter backfill loop: the interval is a constant there.
    "d23_pipeline_tests/quick_daemon.py: dagster._daemon.cli",
    "d23_pipeline_tests/quick_daemon.py: dagster._daemon.controller",
}


def test_no_module_imports_private_dagster_modules() -> None:
    # Dagster's underscore modules change without notice between minor releases.
    private = {
        f"{path.relative_to(REPO)}: {module}"
        for path in SOURCES
        for module in _imported_modules(path)
        if module.startswith("dagster") and any(p.startswith("_") for p in module.split(".")[1:])
    }
    assert private == PRIVATE_IMPORTS_ALLOWED, sorted(private ^ PRIVATE_IMPORTS_ALLOWED)


# What the steps need, never what loading the definitions needs: the webserver, the daemon,
# `dg check defs` and every run (before its first step) load them, and these cost ~100 MB and
# ~0.5 s there (benchmarks/README.md, "Dagster's own overhead").
HEAVY_AT_LOAD = (
    "pyarrow", "numpy", "pandas", "duckdb", "plotly", "narwhals", "httpx", "orjson", "pygal",
    "d23_pipeline.client", "d23_pipeline.landing", "d23_pipeline.warehouse",
    "d23_pipeline.schema", "d23_pipeline.analytics.dashboard", "d23_pipeline.analytics.outcome_mix",
)  # fmt: skip


def test_loading_the_definitions_imports_nothing_a_step_brings() -> None:
    # A fresh interpreter: this one has imported everything already.
    probe = "import sys, d23_pipeline.definitions; print(*sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    heavy = [m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY_AT_LOAD)]
    assert "d23_pipeline.definitions" in loaded
    assert heavy == []


def _arrow_pool(env: dict[str, str]) -> str:
    probe = "import d23_pipeline.client, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_arrow_allocates_with_the_system_allocator_unless_the_operator_chose_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _arrow_pool(env) == "system"
    assert _arrow_pool({**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"
