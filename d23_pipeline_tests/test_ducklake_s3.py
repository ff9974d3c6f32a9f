"""A DuckLake whose data path is an S3 bucket (moto's server on 127.0.0.1): its files are in the
bucket, another process on another folder reads the same rows, and a bucket or credentials the
run cannot use fail it before it reads the API, naming the setting."""

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import Lake, Pipeline, failure_messages
from object_store import SECRET_KEY, S3Server
from postgres import PostgresServer
from processes import free_port

from d23_pipeline.settings import SettingsError, load_options, object_store
from d23_pipeline.simulator import Simulator, serve
from d23_pipeline.warehouse.ducklake import (
    DuckLakeWarehouse,
    WarehouseConnectionError,
    WarehouseSettingsError,
)

MONTH = "2026-04"
# Another host: a process of its own, with nothing of this one's but the settings.
COUNT_ELSEWHERE = (
    "import sys; from d23_pipeline.warehouse.ducklake import DuckLakeWarehouse\n"
    "with DuckLakeWarehouse(sys.argv[1], sys.argv[2]).connect(read_only=True) as con:\n"
    "    print(con.execute('SELECT count(*) FROM d23.logs WHERE _deleted_at IS NULL')"
    ".fetchone()[0])"
)


@pytest.mark.parametrize("pipeline", ["ducklake-s3"], indirect=True)
def test_a_lake_on_object_storage_keeps_its_files_in_the_bucket_for_every_host(
    pipeline: Pipeline, s3: S3Server, tmp_path: Path
) -> None:
    assert pipeline.lake is not None
    data_path = str(pipeline.lake.data_path)
    bucket, folder = data_path.removeprefix("s3://").split("/", 1)

    pipeline.materialize(MONTH)

    assert pipeline.live_rows([MONTH]) == pipeline.expected_rows([MONTH])
    files = [key for key in s3.keys(bucket) if key.startswith(f"{folder}/")]
    assert any(key.endswith(".parquet") for key in files), files
    # This machine keeps its raw snapshots and the dashboard, not the lake's files.
    local = [p for p in pipeline.data_dir.rglob("*.parquet") if "raw" not in p.parts]
    assert local == []
    elsewhere = subprocess.run(
        [sys.executable, "-c", COUNT_ELSEWHERE, pipeline.lake.dsn, data_path],
        cwd=tmp_path,
        env={**os.environ, "D23_DATA_DIR": str(tmp_path / "other-host")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(elsewhere.stdout) == len(pipeline.expected_rows([MONTH]))


def test_a_lake_on_a_bucket_that_does_not_exist_fails_the_run_before_it_reads_the_api(
    postgres: PostgresServer,
    s3: S3Server,
    simulator: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    lake = Lake.create(postgres, "s3://no-such-bucket/lake")
    with serve(simulator) as url:
        pipeline = Pipeline(sim=simulator, api_url=url, data_dir=tmp_path / "data", lake=lake)
        result = pipeline.materialize(MONTH, raise_on_error=False)

    failures = failure_messages(result)
    assert list(failures) == ["d23__raw_logs"]
    assert "D23_DUCKLAKE_DATA_PATH (s3://no-such-bucket/lake)" in failures["d23__raw_logs"]
    assert "NoSuchBucket" in failures["d23__raw_logs"]
    assert simulator.stats.requests == 0
    # A settings error: the run is not retried (defs/run_retries.py).
    with pytest.raises(WarehouseSettingsError):
        DuckLakeWarehouse(lake.dsn, str(lake.data_path)).check_usable()


def test_a_store_that_does_not_answer_is_a_connection_error_a_retry_may_mend(
    postgres: PostgresServer, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    lake = Lake.create(postgres, "s3://lake/d23")

    with pytest.raises(WarehouseConnectionError) as raised:
        DuckLakeWarehouse(lake.dsn, str(lake.data_path)).check_usable()

    assert not isinstance(raised.value, WarehouseSettingsError)
    assert "cannot list D23_DUCKLAKE_DATA_PATH (s3://lake/d23)" in str(raised.value)


def test_a_lake_on_object_storage_without_credentials_names_what_to_set(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws of this machine's
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # nor an instance's role
    lake = Lake.create(postgres, f"s3://{s3.new_bucket()}/lake")

    with pytest.raises(WarehouseSettingsError) as refused:
        DuckLakeWarehouse(lake.dsn, str(lake.data_path)).check_usable()

    assert "no AWS credentials for the bucket of D23_DUCKLAKE_DATA_PATH" in str(refused.value)
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(refused.value)


@pytest.mark.parametrize("pipeline", ["ducklake-s3"], indirect=True)
def test_the_storage_secret_key_is_nowhere_in_what_a_run_records(pipeline: Pipeline) -> None:
    result = pipeline.materialize(MONTH)

    recorded = "".join(str(event) for event in result.all_events)
    assert SECRET_KEY not in recorded
    assert SECRET_KEY not in repr(pipeline.warehouse_resource().warehouse())


LAKE = {"D23_WAREHOUSE": "ducklake", "D23_WAREHOUSE_DSN": "host=db dbname=d23"}


@pytest.mark.parametrize(
    ("path", "env", "message"),
    [
        ("gs://lake/d23", {}, "a local folder or an s3:// URL"),
        ("S3://lake/d23", {}, "s3:// URL in lower case"),
        ("s3:///d23", {}, "names no S3 bucket"),
        ("s3://Lake_1/d23", {}, "names no S3 bucket"),
        ("s3://lake/d23", {"AWS_ENDPOINT_URL": "minio:9000"}, "AWS_ENDPOINT_URL must be"),
        ("s3://lake/d23", {"AWS_ENDPOINT_URL": "http://minio/bucket"}, "http(s)://host[:port]"),
        ("s3://lake/d23", {"AWS_ENDPOINT_URL": "http://minio?x=1"}, "http(s)://host[:port]"),
        ("s3://lake/d23", {"AWS_ENDPOINT_URL_S3": "http://minio:x"}, "no valid port number"),
        ("s3://lake/d23", {"AWS_ENDPOINT_URL_S3": "http://minio:70000"}, "no valid port number"),
    ],
    ids=[
        "another-scheme",
        "upper-case",
        "no-bucket",
        "not-a-bucket-name",
        "no-scheme",
        "a-path",
        "a-query",
        "a-bad-port",
        "a-port-too-high",
    ],
)
def test_an_object_storage_setting_the_lake_cannot_use_is_refused_naming_it(
    path: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_options({**LAKE, "D23_DUCKLAKE_DATA_PATH": path, **env})


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("s3://lake/d23", f"http://someone:{SECRET_KEY}@minio:9000"),
        ("s3://lake/d23", f"someone:{SECRET_KEY}@minio:9000"),  # no scheme
        ("s3://lake/d23", f"http:/someone:{SECRET_KEY}@minio"),  # one slash
        (f"s3://someone:{SECRET_KEY}@lake/d23", ""),
        # DuckDB reads s3_* query parameters of the path as the store's keys.
        (f"s3://lake/d23?s3_access_key_id=AKIA1&s3_secret_access_key={SECRET_KEY}", ""),
        (f"s3://lake_?s3_secret_access_key={SECRET_KEY}", ""),  # not a bucket name either
        ("s3://lake/d23", f"http://minio:9000?s3_secret_access_key={SECRET_KEY}"),
    ],
    ids=[
        "endpoint",
        "endpoint-without-scheme",
        "endpoint-one-slash",
        "data-path",
        "data-path-query",
        "data-path-query-bad-bucket",
        "endpoint-query",
    ],
)
def test_a_setting_holding_a_key_is_refused_without_showing_it(path: str, endpoint: str) -> None:
    with pytest.raises(SettingsError) as refused:
        object_store(path, {"AWS_ENDPOINT_URL": endpoint})

    assert SECRET_KEY not in str(refused.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(refused.value)


def test_a_data_path_whose_folder_holds_a_hash_is_a_folder_name() -> None:
    # S3 keys may hold '#', and DuckDB writes and reads them: a lake made so still loads.
    assert object_store("s3://lake/team#1/d23", {}).bucket == "lake"


def test_the_s3_endpoint_is_the_one_the_aws_sdk_would_use() -> None:
    env = {
        "AWS_ENDPOINT_URL": "https://everything.example",
        "AWS_ENDPOINT_URL_S3": "http://10.0.0.5:9000/",
        "AWS_REGION": " ",  # blank: the next variable's
        "AWS_DEFAULT_REGION": "eu-central-1",
    }

    store = object_store("s3://lake/d23", env)

    assert (store.bucket, store.endpoint, store.use_ssl, store.region) == (
        "lake",
        "10.0.0.5:9000",
        False,
        "eu-central-1",
    )
    assert object_store("s3://lake", {}).endpoint is None


@pytest.mark.parametrize(
    ("status", "refused"),
    [(403, True), (503, False), (500, False), (429, False)],
    ids=["refused", "unavailable", "server-error", "slow-down"],
)
def test_only_a_store_that_refuses_the_settings_is_a_settings_error(
    postgres: PostgresServer,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    refused: bool,
) -> None:
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer) as store:
        threading.Thread(target=store.serve_forever, daemon=True).start()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{store.server_port}")
        lake = Lake.create(postgres, "s3://lake/d23")
        with pytest.raises(WarehouseConnectionError) as raised:
            DuckLakeWarehouse(lake.dsn, str(lake.data_path)).check_usable()
        store.shutdown()

    assert isinstance(raised.value, WarehouseSettingsError) is refused
    assert f"HTTP {status}" in str(raised.value)
