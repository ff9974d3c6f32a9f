"""Rules for the code itself that no linter here enforces."""

import ast
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


def test_no_module_imports_private_dagster_modules() -> None:
    # Dagster's underscore modules change without notice between minor releases.
    private = {
        f"{path.relative_to(REPO)}: {module}"
        for path in SOURCES
        for module in _imported_modules(path)
        if module.startswith("dagster") and any(p.startswith("_") for p in module.split(".")[1:])
    }
    assert not private, sorted(private)
