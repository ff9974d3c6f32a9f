"""The two instance files of d23_pipeline/deploy differ in their storage only."""

from importlib import resources

import yaml

DEPLOY = resources.files("d23_pipeline.deploy")


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_postgres_instance_keeps_the_embedded_queue_pools_retries_and_monitoring() -> None:
    embedded, production = load("dagster.yaml"), load("dagster.postgres.yaml")
    assert "storage" not in embedded
    assert {k: v for k, v in production.items() if k != "storage"} == embedded


def test_postgres_credentials_come_from_the_environment() -> None:
    database = load("dagster.postgres.yaml")["storage"]["postgres"]["postgres_db"]
    for field in ("hostname", "port", "db_name", "username", "password"):
        assert set(database[field]) == {"env"}, field
