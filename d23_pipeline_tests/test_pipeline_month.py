"""A month through the whole pipeline against the simulator: exact, idempotent, change-aware."""

from harness import Pipeline


def test_materialized_month_equals_the_source_exactly(pipeline: Pipeline) -> None:
    result = pipeline.materialize("2026-04")

    assert result.success
    assert pipeline.live_rows(["2026-04"]) == pipeline.expected_rows(["2026-04"])
    assert pipeline.live_rows(["2026-03", "2026-05"]) == set()
