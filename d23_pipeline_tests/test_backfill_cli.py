"""``python -m d23_pipeline.backfill``: month ranges and clear errors (the launch itself is e2e)."""

import json
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from processes import clean_env, free_port, make_dagster_home, run_python, webserver_process

from d23_pipeline import backfill
from d23_pipeline.backfill import main, month_partitions, month_progress
from d23_pipeline.defs.keys import RETRY_WHOLE_RUN_TAGS
from d23_pipeline.settings import SettingsError


def test_month_range_includes_both_ends_across_a_year():
    assert month_partitions("2025-11", "2026-02") == [
        "2025-11-01",
        "2025-12-01",
        "2026-01-01",
        "2026-02-01",
    ]
    assert month_partitions("2026-05", "2026-05") == ["2026-05-01"]


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-5", "2026-06", "FIRST"),
        ("2026-05", "2026-13", "LAST"),
        ("2026-06", "2026-05", "before"),
    ],
)
def test_bad_ranges_are_refused_naming_the_argument(first, last, message):
    with pytest.raises(SettingsError, match=message):
        month_partitions(first, last)


def test_cli_reports_a_bad_range_without_a_traceback(capsys):
    assert main(["2026-06", "2026-05", "--url", "http://127.0.0.1:9"]) == 2
    assert "LAST (2026-05) is before FIRST (2026-06)" in capsys.readouterr().err


def test_cli_reports_a_webserver_that_is_not_running(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["2026-05", "2026-06", "--url", url]) == 2
    err = capsys.readouterr().err
    assert f"Dagster webserver at {url} did not answer" in err
    assert err.rstrip().endswith("(is `make run` running? --url names a webserver elsewhere)")


def test_without_url_it_asks_the_webserver_on_make_runs_ui_port(
    ended_backfill, monkeypatch, capsys
):
    monkeypatch.setenv("D23_UI_PORT", ended_backfill.rsplit(":", 1)[1])

    assert main(["2026-07", "2026-08"]) == 0

    assert len(FakeWebserver.launches) == 1
    assert f"Follow it at {ended_backfill}/runs/b/" in capsys.readouterr().out


def test_a_ui_port_out_of_range_is_named(monkeypatch, capsys):
    monkeypatch.setenv("D23_UI_PORT", "70000")

    assert main(["2026-07", "2026-08"]) == 2

    assert "D23_UI_PORT must be" in capsys.readouterr().err


def test_the_simulators_port_is_not_the_backfill_commands_business(ended_backfill, monkeypatch):
    monkeypatch.setenv("D23_UI_PORT", ended_backfill.rsplit(":", 1)[1])
    monkeypatch.setenv("D23_SIMULATOR_PORT", "abc")

    assert main(["2026-07", "2026-08"]) == 0


def test_a_launch_whose_answer_is_lost_says_it_may_have_launched_and_exits_3(
    webserver: str, capsys: pytest.CaptureFixture
) -> None:
    FakeWebserver.accept = FakeWebserver.launch_answer_lost = True

    assert main(["2026-07", "2026-08", "--url", webserver]) == 3

    err = capsys.readouterr().err
    assert len(FakeWebserver.launches) == 1
    assert "the backfill may have been launched: look at" in err and "/runs/b before" in err
    assert "is `make run` running?" not in err  # it answered


def test_a_webserver_not_running_is_named_without_the_proxy_password_in_its_url(capsys):
    url = f"http://admin:SECRET-pw@127.0.0.1:{free_port()}"
    assert main(["2026-05", "2026-06", "--url", url]) == 2
    err = capsys.readouterr().err
    assert f"Dagster webserver at {url.replace('admin:SECRET-pw@', '')} did not answer" in err
    assert "SECRET" not in err


class _ProxyEchoingCredentials(BaseHTTPRequestHandler):
    """A proxy in front of Dagster that refuses the credentials it was sent, quoting its
    Authorization header back: in a 401 page, or as a GraphQL error."""

    answer = "401 page"

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        sent = self.headers.get("Authorization", "")
        if self.answer == "401 page":
            status, payload = 401, f"<html>credentials {sent} rejected</html>".encode()
        elif self.answer == "GraphQL error":
            status, payload = 200, json.dumps({"errors": [{"message": f"bad auth {sent}"}]})
            payload = payload.encode()
        else:  # in the data, as the name of something it did not find
            missing = {"__typename": "AssetNotFoundError", "message": f"no asset {sent}"}
            status, payload = 200, json.dumps({"data": {"assetNodeOrError": missing}}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("answer", ["401 page", "GraphQL error", "GraphQL data"])
def test_a_proxy_echoing_the_credentials_of_the_url_does_not_get_them_printed(capsys, answer):
    _ProxyEchoingCredentials.answer = answer
    with ThreadingHTTPServer(("127.0.0.1", 0), _ProxyEchoingCredentials) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        url = f"http://admin:SECRET-pw@127.0.0.1:{proxy.server_address[1]}"
        assert main(["2026-05", "2026-06", "--url", url]) == 2
        proxy.shutdown()

    err = capsys.readouterr().err
    assert backfill.PROXY_CREDENTIALS_WITHHELD in err
    assert "SECRET" not in err and b64encode(b"admin:SECRET-pw").decode() not in err


def test_a_url_whose_proxy_password_is_empty_withholds_nothing_for_it(capsys) -> None:
    # No password to withhold: "Connection refused" is not taken for an echo of it.
    assert main(["2026-05", "2026-06", "--url", f"http://apikey:@127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "did not answer" in err and backfill.PROXY_CREDENTIALS_WITHHELD not in err


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:3000/?token=SECRET",
        "http://127.0.0.1:3000/#SECRET",
        "SECRET:3000",
        "http://admin:SECRET@127.0.0.1:3000/\n",  # a line break pasted with it
    ],
)
def test_a_url_this_tool_cannot_append_paths_to_is_refused_without_printing_it(capsys, url):
    with pytest.raises(SystemExit) as exited:
        main(["2026-05", "2026-06", "--url", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--url must" in err and "SECRET" not in err


class FakeWebserver(BaseHTTPRequestHandler):
    """Dagster's GraphQL endpoint as the backfill command sees it: the months it has, a launch
    it refuses with a 500 and its own message (or accepts), and an ended backfill's runs with
    their check evaluations, served in pages of one event."""

    partitions = [f"2026-{m:02d}-01" for m in range(7, 13)]
    # A deployment's assets: the D23 ones, and one of another code location.
    assets = [["d23", "raw_logs"], ["d23", "logs"], ["other", "table"]]
    launches: list[dict] = []
    refusal: dict = {}
    accept = False
    launch_answer_lost = False
    backfill_runs: list[dict] = []
    run_checks: dict[str, list[dict]] = {}
    status_failures = 0  # polls of the backfill's status answered with a proxy's 502 first
    status_gone = False  # the backfill's status answered with Dagster's BackfillNotFoundError
    backfill_status = "COMPLETED_SUCCESS"
    check_failures = 0  # requests for check evaluations answered with a proxy's 502 first
    daemon_healthy: bool | None = True  # the instance's daemon, as its heartbeats say
    running: list[dict] = []  # backfills whose runs may still go (REQUESTED, CANCELING, FAILING)
    # Launched by other commands at the moment this one launches: stored just before its own
    # backfill (bf1), or just after it, and listed from its launch on.
    launched_beside: list[dict] = []
    launched_after: list[dict] = []
    canceled: list[str] = []
    cancels_lost = 0  # cancels a daemon's tick writes over (the status stays REQUESTED)
    cancel_refused = False
    listing_fails_once_launched = False
    listing_error = False  # one of those lists answered with a PythonError
    followed: list[str] = []  # the backfills whose status was asked for
    authorizations: list[str | None] = []  # each request's Authorization header

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.authorizations.append(self.headers.get("Authorization"))
        if request["query"].lstrip().startswith("query PartitionKeys"):
            status = 200
            body = {"data": {"assetNodeOrError": {
                "__typename": "AssetNode", "partitionKeys": self.partitions}}}  # fmt: skip
        elif request["query"].lstrip().startswith("query DaemonHealth"):
            status = 200
            body = {"data": {"instance": {"daemonHealth": {
                "daemonStatus": {"healthy": self.daemon_healthy}}}}}  # fmt: skip
        elif request["query"].lstrip().startswith("query AssetKeys"):
            status = 200
            body = {"data": {"assetNodes": [{"assetKey": {"path": p}} for p in self.assets]}}
        elif request["query"].lstrip().startswith("query RunningBackfills"):
            status = 200
            # Newest first, as the instance lists them; self.running is in the order stored.
            going = [
                b for b in self.running if b["status"] in ("REQUESTED", "CANCELING", "FAILING")
            ]
            body = {"data": {"running": {"__typename": "PartitionBackfills",
                "results": going[::-1]}}}  # fmt: skip
            if self.listing_error or (self.listing_fails_once_launched and self.launches):
                body["data"]["running"] = {"__typename": "PythonError", "message": "boom"}
        elif request["query"].lstrip().startswith("query BackfillStatus") and (
            FakeWebserver.status_failures > 0
        ):
            FakeWebserver.status_failures -= 1
            status, body = 502, {}
        elif request["query"].lstrip().startswith("query BackfillStatus") and self.status_gone:
            status = 200
            body = {"data": {"partitionBackfillOrError": {
                "__typename": "BackfillNotFoundError", "message": "no backfill bf1"}}}  # fmt: skip
        elif request["query"].lstrip().startswith("query BackfillStatus"):
            self.followed.append(request["variables"]["id"])
            status = 200
            body = {"data": {"partitionBackfillOrError": {"__typename": "PartitionBackfill",
                "status": self.backfill_status, "runs": self.backfill_runs}}}  # fmt: skip
        elif request["query"].lstrip().startswith("query RunCheckEvaluations") and (
            FakeWebserver.check_failures > 0
        ):
            FakeWebserver.check_failures -= 1
            status, body = 502, {}
        elif request["query"].lstrip().startswith("query RunCheckEvaluations"):
            status = 200
            events = self.run_checks[request["variables"]["runId"]]
            at = int(request["variables"]["cursor"] or 0)
            body = {"data": {"logsForRun": {"__typename": "EventConnection",
                "events": events[at : at + 1], "cursor": str(at + 1),
                "hasMore": at + 1 < len(events)}}}  # fmt: skip
        elif request["query"].lstrip().startswith("mutation CancelBackfill"):
            self.canceled.append(request["variables"]["id"])
            for backfill in self.running:
                if backfill["id"] == request["variables"]["id"] and not FakeWebserver.cancels_lost:
                    backfill["status"] = "CANCELING"
            FakeWebserver.cancels_lost = max(0, FakeWebserver.cancels_lost - 1)
            status = 200
            answer = ({"__typename": "UnauthorizedError", "message": "nope"} if self.cancel_refused
                else {"__typename": "CancelBackfillSuccess", "backfillId": "bf1"})  # fmt: skip
            body = {"data": {"cancelPartitionBackfill": answer}}
        elif self.accept and self.launch_answer_lost:
            self.launches.append(request["variables"])
            status, body = 502, {}  # launched, and the proxy's answer is all that comes back
        elif self.accept:
            self.launches.append(request["variables"])
            params = request["variables"]["backfillParams"]
            self.running += [*self.launched_beside, {"id": "bf1", "status": "REQUESTED",
                "partitionNames": params["partitionNames"], "partitionSetName": None,
                "assetSelection": params["assetSelection"], "tags": params["tags"]},
                *self.launched_after]  # fmt: skip
            status = 200
            body = {"data": {"launchPartitionBackfill": {
                "__typename": "LaunchBackfillSuccess", "backfillId": "bf1"}}}  # fmt: skip
        else:
            self.launches.append(request["variables"])
            status, body = 500, self.refusal
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(backfill, "CANCEL_SETTLE_S", 0.0)
    FakeWebserver.launches, FakeWebserver.running, FakeWebserver.followed = [], [], []
    FakeWebserver.launched_beside, FakeWebserver.launched_after, FakeWebserver.canceled = [], [], []
    FakeWebserver.cancels_lost, FakeWebserver.cancel_refused = 0, False
    FakeWebserver.listing_fails_once_launched = False
    FakeWebserver.authorizations = []
    FakeWebserver.listing_error = False
    FakeWebserver.accept = FakeWebserver.launch_answer_lost = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWebserver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_months_the_deployment_does_not_have_are_refused_before_launching(webserver, capsys):
    assert main(["2026-05", "2026-08", "--url", webserver]) == 2

    assert (
        f"no partition for 2026-05, 2026-06: the deployment at {webserver} has months "
        "2026-07 to 2026-12"
    ) in capsys.readouterr().err
    assert FakeWebserver.launches == []


# Dagster answers 500 either with GraphQL errors or with data naming a PythonError (seen from
# dagster-webserver 1.13.27 for a backfill of months it has no partition for).
@pytest.mark.parametrize(
    ("refusal", "shown"),
    [
        (
            {"data": None, "errors": [{"message": "DagsterInvariantViolationError: boom"}]},
            "refused the request: DagsterInvariantViolationError: boom",
        ),
        (
            {"data": {"launchPartitionBackfill": {
                "__typename": "PythonError", "message": "CheckError: Invariant failed"}}},
            "PythonError: CheckError: Invariant failed",
        ),
    ],
)  # fmt: skip
def test_the_servers_own_error_is_shown_not_just_its_status(webserver, capsys, refusal, shown):
    FakeWebserver.refusal = refusal

    assert main(["2026-07", "2026-08", "--url", webserver]) == 2

    err = capsys.readouterr().err
    assert shown in err and "500" not in err
    assert FakeWebserver.launches[0]["backfillParams"]["partitionNames"] == [
        "2026-07-01",
        "2026-08-01",
    ]


def test_a_backfill_selects_the_deployments_d23_assets_without_loading_the_definitions(
    webserver,
):
    # No D23_WAREHOUSE_DSN: loading the definitions would fail on it, queueing must not.
    probe = (
        "import sys; from d23_pipeline.backfill import main; "
        f"code = main(['2026-07', '2026-07', '--url', '{webserver}']); "
        "print('d23_pipeline.definitions' in sys.modules)"
    )

    done = run_python(["-c", probe], clean_env(D23_WAREHOUSE="ducklake"))

    assert done.stdout.strip() == "False", done.stderr
    (launch,) = FakeWebserver.launches
    assert launch["backfillParams"]["assetSelection"] == [
        {"path": ["d23", "raw_logs"]},
        {"path": ["d23", "logs"]},
    ]


def test_a_backfills_failed_months_are_retried_from_their_read(webserver):
    main(["2026-07", "2026-08", "--url", webserver])

    tags = {t["key"]: t["value"] for t in FakeWebserver.launches[0]["backfillParams"]["tags"]}
    assert tags["dagster/retry_strategy"] == "ALL_STEPS"


def _run(partition: str, status: str) -> dict:
    return {"runId": f"{partition}-{status}", "status": status,
            "tags": [{"key": "dagster/partition", "value": partition}]}  # fmt: skip


def _evaluation(asset: str, check: str, passed: bool, severity: str, why: str = "") -> dict:
    return {"evaluation": {"checkName": check, "success": passed, "severity": severity,
        "description": why or None, "assetKey": {"path": asset.split("/")}}}  # fmt: skip


@pytest.fixture
def ended_backfill(webserver: str) -> Iterator[str]:
    """A backfill of 2026-07 (failed once on an unverified slice, then retried) and 2026-08,
    both successful in the end; 2026-08 with rates the mapping does not cover."""
    FakeWebserver.accept = True
    failed, retried, august = (
        _run("2026-07-01", "FAILURE") | {"creationTime": 1.0},
        _run("2026-07-01", "SUCCESS") | {"creationTime": 2.0},
        _run("2026-08-01", "SUCCESS") | {"creationTime": 1.5},
    )
    FakeWebserver.backfill_runs = [august, retried, failed]
    other_event: dict = {}  # what GraphQL gives for an event no fragment of the query matches
    FakeWebserver.run_checks = {
        failed["runId"]: [_evaluation("d23/logs", "slices_verified", False, "ERROR")],
        retried["runId"]: [
            other_event,
            _evaluation("d23/logs", "slices_verified", True, "ERROR"),
            _evaluation("d23/raw_logs", "rejected_rows", False, "WARN"),
        ],
        august["runId"]: [
            _evaluation("d23/logs", "slices_verified", True, "ERROR"),
            _evaluation(
                "d23/outcome_kpis", "unmapped_share", False, "ERROR", "41 attempts\nunmapped"
            ),
        ],
    }
    yield webserver
    FakeWebserver.accept = False
    FakeWebserver.status_failures = FakeWebserver.check_failures = 0
    FakeWebserver.status_gone = False
    FakeWebserver.backfill_status = "COMPLETED_SUCCESS"
    FakeWebserver.daemon_healthy = True


# The tags of a backfill this command launched, and of one the asset graph's dialog launched.
LAUNCHED_HERE = {"dagster/from_ui": "true", **RETRY_WHOLE_RUN_TAGS}
LAUNCHED_HERE_TO_YIELD = {**LAUNCHED_HERE, **backfill.YIELDS_TAG}  # without --anyway
LAUNCHED_FROM_THE_DIALOG = {"dagster/from_ui": "true"}


def _running(
    backfill_id: str,
    months: range | None,
    assets: list[list[str]] | None,
    job: str = "",
    status: str = "REQUESTED",
    tags: dict[str, str] = LAUNCHED_HERE,
) -> dict:
    """A backfill whose runs may still go, as the instance lists it: an asset backfill of
    ``assets``, or (``assets`` None) a backfill of the job ``job``; ``months`` None: months
    Dagster cannot list. ``tags``: by default, those this command launches with."""
    names = None if months is None else [f"2026-{m:02d}-01" for m in months]
    return {"id": backfill_id, "status": status, "partitionNames": names,
        "partitionSetName": f"{job}_partition_set" if job else None,
        "assetSelection": None if assets is None else [{"path": p} for p in assets],
        "tags": [{"key": k, "value": v} for k, v in tags.items()]}  # fmt: skip


D23_ASSETS = [["d23", "raw_logs"], ["d23", "logs"]]


def test_a_launch_links_to_the_backfill_without_the_proxy_password_and_sends_it(
    ended_backfill, capsys
):
    address = ended_backfill.removeprefix("http://")

    assert main(["2026-07", "2026-08", "--url", f"http://admin:SECRET-pw@{address}"]) == 0

    out = capsys.readouterr().out
    assert f"Follow it at http://{address}/runs/b/" in out and "SECRET" not in out
    assert "?tab=" not in out  # Dagster 1.13 shows an empty page for a tab it lacks
    assert FakeWebserver.authorizations[-1] == "Basic " + b64encode(b"admin:SECRET-pw").decode()


def test_the_same_months_again_follow_the_backfill_already_running(ended_backfill, capsys):
    FakeWebserver.running = [_running("bf0", range(7, 9), D23_ASSETS[::-1])]
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 0

    out = capsys.readouterr().out
    assert "Backfill bf0 of the same 2 months is already running: not launched again" in out
    assert FakeWebserver.launches == []
    assert set(FakeWebserver.followed) == {"bf0"}


@pytest.mark.parametrize(
    ("running", "shown"),
    [
        (_running("bf0", range(8, 11), D23_ASSETS), "(running) has 2026-08"),
        # More months than asked for: following it would wait for those too.
        (_running("bf0", range(6, 10), D23_ASSETS), "(running) has 2026-07, 2026-08"),
        # The same months from the asset graph with only the raw asset picked: not what this does.
        (_running("bf0", range(7, 9), [["d23", "raw_logs"]]), "(running) has 2026-07, 2026-08"),
        (
            _running("bf0", range(1, 13), None, job="d23_pipeline_job"),
            "(running) has 2026-07, 2026-08",
        ),
        (_running("bf0", None, D23_ASSETS), "(running) has months Dagster cannot list"),
        # The same months from the asset graph's dialog: followed, a month of it failing on an
        # unverified slice would be retried from d23/logs only, and stay failed.
        (
            _running("bf0", range(7, 9), D23_ASSETS, tags=LAUNCHED_FROM_THE_DIALOG),
            "(running, but a failed month of it is retried from its failed step only) has "
            "2026-07, 2026-08",
        ),
        # The same months, but being canceled: its runs still go, and it will launch no more.
        (
            _running("bf0", range(7, 9), D23_ASSETS, status="CANCELING"),
            "(being canceled) has 2026-07, 2026-08",
        ),
        (
            _running("bf0", range(8, 9), D23_ASSETS, status="FAILING"),
            "(failing, its runs ending) has 2026-08",
        ),
    ],
)
def test_months_a_running_backfill_has_are_not_launched_again_unless_asked(
    ended_backfill, capsys, running, shown
):
    FakeWebserver.running = [running]

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 2

    err = capsys.readouterr().err
    assert f"not launched: backfill bf0 {shown} (follow or cancel it at " in err
    assert f"{ended_backfill}/runs/b/bf0" in err and "--anyway" in err
    assert FakeWebserver.launches == []

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--anyway"]) == 0
    assert len(FakeWebserver.launches) == 1


def test_a_launch_at_the_same_moment_as_another_of_its_months_cancels_the_later(
    ended_backfill, capsys
):
    # Both looked before launching and saw nothing; the one stored later yields.
    FakeWebserver.launched_beside = [_running("bf0", range(8, 10), D23_ASSETS)]

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 2

    err = capsys.readouterr().err
    assert (
        "error: backfill bf1, launched at the same moment as another of these months, is "
        "canceled: not launched: backfill bf0 (running) has 2026-08" in err
    )
    assert FakeWebserver.canceled == ["bf1"]


def test_a_launch_at_the_same_moment_as_the_same_backfill_follows_the_one_going_on(
    ended_backfill, capsys
):
    # Three at once: bf05 yields to bf0, as this one (bf1) does; bf1 follows bf0, not bf05.
    FakeWebserver.launched_beside = [
        _running("bf0", range(7, 9), D23_ASSETS),
        _running("bf05", range(7, 9), D23_ASSETS),
    ]
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 0

    out = capsys.readouterr().out
    assert "Backfill bf0 of the same 2 months is already running: not launched again" in out
    assert "backfill bf1, launched at the same moment as another of these months, is " in out
    assert FakeWebserver.canceled == ["bf1"] and set(FakeWebserver.followed) == {"bf0"}


@pytest.mark.parametrize(
    ("bf05", "yields"),
    [
        # Launched by this command, bf05 yields to bf0: none of 09-10 is in one that goes on.
        (_running("bf05", range(8, 10), D23_ASSETS, tags=LAUNCHED_HERE_TO_YIELD), False),
        # From the UI, or with --anyway, it goes on beside bf0: this one yields to it.
        (_running("bf05", range(8, 10), D23_ASSETS, tags=LAUNCHED_FROM_THE_DIALOG), True),
        (_running("bf05", range(8, 10), D23_ASSETS), True),
        # Being canceled, or failing, it launches no more runs.
        (_running("bf05", range(9, 11), D23_ASSETS, status="CANCELING"), False),
        (_running("bf05", range(9, 11), D23_ASSETS, status="FAILING"), False),
    ],
)
def test_a_launch_yields_only_to_backfills_that_go_on(ended_backfill, bf05, yields):
    FakeWebserver.launched_beside = [_running("bf0", range(7, 9), D23_ASSETS), bf05]

    assert main(["2026-09", "2026-10", "--url", ended_backfill]) == (2 if yields else 0)

    assert FakeWebserver.canceled == (["bf1"] if yields else [])


def test_a_launch_says_it_yields_unless_launched_anyway(ended_backfill):
    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 0
    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--anyway"]) == 0

    tags = [{t["key"]: t["value"] for t in launch["backfillParams"]["tags"]}
            for launch in FakeWebserver.launches]  # fmt: skip
    assert [backfill.YIELDS_TAG.items() <= t.items() for t in tags] == [True, False]


def test_the_same_months_launched_twice_at_once_are_followed_in_the_oldest(ended_backfill, capsys):
    # bf05 was launched just after bf0, at the same moment: it is the one that yields.
    FakeWebserver.running = [
        _running("bf0", range(7, 9), D23_ASSETS, tags=LAUNCHED_HERE_TO_YIELD),
        _running("bf05", range(7, 9), D23_ASSETS, tags=LAUNCHED_HERE_TO_YIELD),
    ]

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 0

    assert "Backfill bf0 of the same 2 months is already running" in capsys.readouterr().out


def test_a_backfill_stored_just_after_this_one_leaves_this_one_running(ended_backfill):
    FakeWebserver.launched_after = [_running("bf0", range(7, 9), D23_ASSETS)]

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 0

    assert FakeWebserver.canceled == [] and len(FakeWebserver.launches) == 1


def test_a_cancel_a_daemon_tick_writes_over_is_asked_again(ended_backfill):
    FakeWebserver.launched_beside = [_running("bf0", range(8, 10), D23_ASSETS)]
    FakeWebserver.cancels_lost = 1

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 2

    assert FakeWebserver.canceled == ["bf1", "bf1"]


@pytest.mark.parametrize("fault", ["listing", "cancel"])
def test_a_launch_that_cannot_settle_a_launch_beside_it_says_it_is_launched_and_exits_3(
    ended_backfill, capsys, fault
):
    FakeWebserver.launched_beside = [_running("bf0", range(8, 10), D23_ASSETS)]
    FakeWebserver.listing_fails_once_launched = fault == "listing"
    FakeWebserver.cancel_refused = fault == "cancel"

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 3

    err = capsys.readouterr().err
    assert {
        "listing": "error: backfill bf1 is launched, but whether one launched at the same moment",
        "cancel": "error: backfill bf1 is launched at the same moment as another of these months "
        "(bf0), and could not be canceled: UnauthorizedError: nope",
    }[fault] in err
    assert f"Look at {ended_backfill}/runs/b before launching again" in err


def test_a_backfill_list_the_webserver_cannot_give_launches_nothing(ended_backfill, capsys):
    FakeWebserver.listing_error = True

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 2

    assert "PythonError: boom" in capsys.readouterr().err and FakeWebserver.launches == []


def test_running_backfills_of_other_months_or_other_assets_do_not_hold_a_launch(ended_backfill):
    FakeWebserver.running = [
        _running("bf0", range(9, 13), D23_ASSETS),
        _running("bf9", range(7, 9), [["other", "table"]]),
        _running("bf8", range(7, 9), None, job="other_job"),
    ]

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 0
    assert len(FakeWebserver.launches) == 1


@pytest.mark.parametrize(("healthy", "warned"), [(False, True), (True, False), (None, False)])
def test_a_launch_says_so_when_no_daemon_would_start_the_months(
    ended_backfill, capsys, healthy, warned
):
    FakeWebserver.daemon_healthy = healthy

    assert main(["2026-07", "2026-08", "--url", ended_backfill]) == 0

    assert ("no Dagster daemon runs backfills" in capsys.readouterr().err) is warned
    assert len(FakeWebserver.launches) == 1


def test_wait_keeps_saying_so_while_no_daemon_runs(ended_backfill, capsys, monkeypatch):
    FakeWebserver.daemon_healthy = False
    FakeWebserver.backfill_status = "REQUESTED"
    pauses = []

    def pause(_seconds: float) -> None:  # the backfill ends at the third poll's pause
        pauses.append(_seconds)
        if len(pauses) == 3:
            FakeWebserver.backfill_status = "COMPLETED_SUCCESS"

    monkeypatch.setattr(backfill, "DAEMON_CHECK_S", 0.0)
    monkeypatch.setattr(backfill.time, "sleep", pause)

    main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"])

    # At the launch, then before each of the four polls (the check is due at every one here).
    assert capsys.readouterr().err.count("no Dagster daemon runs backfills") == 1 + 4


def test_wait_lists_the_checks_that_failed_and_fails_on_an_error_one(ended_backfill, capsys):
    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 1

    out = capsys.readouterr().out
    assert "finished: COMPLETED_SUCCESS" in out
    assert "2026-07: check d23/raw_logs rejected_rows failed (WARN)" in out
    assert "2026-08: check d23/outcome_kpis unmapped_share failed (ERROR): 41 attempts" in out
    # The run the daemon retried does not count: its retry verified the slice.
    assert "slices_verified" not in out


def test_wait_says_why_each_step_of_a_failed_month_failed(ended_backfill, capsys):
    FakeWebserver.backfill_status = "COMPLETED_FAILED"
    FakeWebserver.backfill_runs = [_run("2026-07-01", "FAILURE") | {"creationTime": 1.0}]
    refused = "AuthenticationError: login for lender 'demo' refused (HTTP 401, request id r-1)"
    FakeWebserver.run_checks = {"2026-07-01-FAILURE": [{
        "stepKey": "d23__raw_logs",
        "error": {
            "message": 'DagsterExecutionStepExecutionError: Error occurred while executing op '
            '"d23__raw_logs":\n',
            "errorChain": [{"error": {"message": f"{refused}\n  File ...\n"}}],
        },
    }]}  # fmt: skip

    assert main(["2026-07", "2026-07", "--url", ended_backfill, "--wait"]) == 1

    out = capsys.readouterr().out
    assert "Backfill bf1: 1 month, 2026-07 to 2026-07\n" in out
    assert f"  2026-07: step d23__raw_logs failed: {refused}\n" in out


def test_wait_says_why_a_month_failed_outside_its_steps(ended_backfill, capsys):
    FakeWebserver.backfill_status = "COMPLETED_FAILED"
    FakeWebserver.backfill_runs = [_run("2026-07-01", "FAILURE") | {"creationTime": 1.0}]
    swept = "the run's process (pid 41) is gone: a `make run` stopped while it ran"
    FakeWebserver.run_checks = {"2026-07-01-FAILURE": [{"runFailure": f"{swept}\nmore"}]}

    assert main(["2026-07", "2026-07", "--url", ended_backfill, "--wait"]) == 1

    assert f"  2026-07: run failed: {swept}\n" in capsys.readouterr().out


def test_wait_says_a_month_was_canceled_and_which_step_it_interrupted(ended_backfill, capsys):
    FakeWebserver.backfill_status = "CANCELED"
    FakeWebserver.backfill_runs = [_run("2026-07-01", "CANCELED") | {"creationTime": 1.0}]
    interrupted = "DagsterExecutionInterruptedError: Execution was interrupted"
    FakeWebserver.run_checks = {"2026-07-01-CANCELED": [
        {"stepKey": "d23__logs", "error": {"message": f"{interrupted}\n"}},
        {"runCanceled": 'Execution of run for "__ASSET_JOB" canceled.'},
    ]}  # fmt: skip

    assert main(["2026-07", "2026-07", "--url", ended_backfill, "--wait"]) == 1

    out = capsys.readouterr().out
    assert f"  2026-07: step d23__logs failed: {interrupted}\n" in out
    assert '  2026-07: run canceled: Execution of run for "__ASSET_JOB" canceled.\n' in out


def test_wait_names_the_months_a_canceled_backfill_never_ran(ended_backfill, capsys):
    # Canceled while its first month ran: the second month's run was never created, and the
    # first was canceled while queued, with no event of its own.
    FakeWebserver.backfill_status = "CANCELED"
    FakeWebserver.backfill_runs = [_run("2026-07-01", "CANCELED") | {"creationTime": 1.0}]
    FakeWebserver.run_checks = {"2026-07-01-CANCELED": []}

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 1

    out = capsys.readouterr().out
    assert "  2026-07: run canceled\n" in out
    assert "  2026-08: not run: the backfill ended before launching its run\n" in out


def test_wait_says_why_the_backfills_dashboard_run_failed(ended_backfill, capsys):
    # Every month succeeded; the dashboard's run, which has no partition, did not.
    FakeWebserver.backfill_status = "COMPLETED_FAILED"
    dashboard = {"runId": "dashboard-FAILURE", "status": "FAILURE", "tags": []}
    FakeWebserver.backfill_runs = [
        _run("2026-07-01", "SUCCESS") | {"creationTime": 1.0},
        dashboard | {"creationTime": 2.0},
    ]
    busy = "WarehouseBusyError: another process held the warehouse for 900 s"
    FakeWebserver.run_checks = {
        "2026-07-01-SUCCESS": [],
        "dashboard-FAILURE": [
            {"stepKey": "d23__outcome_dashboard", "error": {"message": f"{busy}\n"}}
        ],
    }

    assert main(["2026-07", "2026-07", "--url", ended_backfill, "--wait"]) == 1

    assert f"  dashboard: step d23__outcome_dashboard failed: {busy}\n" in (capsys.readouterr().out)


def test_wait_names_the_checks_that_failed_a_step(ended_backfill, capsys):
    FakeWebserver.backfill_status = "COMPLETED_FAILED"
    FakeWebserver.backfill_runs = [_run("2026-07-01", "FAILURE") | {"creationTime": 1.0}]
    failed = (
        "DagsterAssetCheckFailedError: 2 blocking asset checks failed with ERROR severity:\n"
        "d23/logs: slices_verified,deletions_within_limit\n"
    )
    FakeWebserver.run_checks = {
        "2026-07-01-FAILURE": [{"stepKey": "d23__logs", "error": {"message": failed}}]
    }

    assert main(["2026-07", "2026-07", "--url", ended_backfill, "--wait"]) == 1

    assert (
        "  2026-07: step d23__logs failed: DagsterAssetCheckFailedError: 2 blocking asset checks "
        "failed with ERROR severity: d23/logs: slices_verified,deletions_within_limit\n"
    ) in capsys.readouterr().out


def test_wait_shows_a_failed_checks_first_line_whole(ended_backfill, capsys):
    # The deletion check's first line ends with the run config that confirms the deletions.
    why = "x" * 400 + ' {"confirm_deletions": true}'
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = [
        _evaluation("d23/logs", "deletions_within_limit", False, "ERROR", f"{why}\nmore")
    ]

    main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"])

    assert f"deletions_within_limit failed (ERROR): {why}\n" in capsys.readouterr().out


def test_ctrl_c_while_waiting_says_the_backfill_goes_on_and_where(
    ended_backfill, capsys, monkeypatch
):
    FakeWebserver.backfill_status = "REQUESTED"

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(backfill.time, "sleep", interrupted)

    try:
        code = main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"])
    except KeyboardInterrupt:  # escaped: a failure of this test, not the end of the session
        pytest.fail("Ctrl-C while waiting ended in a KeyboardInterrupt")
    assert code == 130

    err = capsys.readouterr().err
    assert "Stopped following backfill bf1; it goes on in Dagster" in err
    assert f"{ended_backfill}/runs/b/bf1" in err


def test_wait_exits_0_when_only_warnings_failed(ended_backfill, capsys):
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 0
    assert "rejected_rows failed (WARN)" in capsys.readouterr().out


def test_wait_follows_a_backfill_through_a_webserver_that_stops_answering_for_a_while(
    ended_backfill, capsys, monkeypatch
):
    monkeypatch.setattr(backfill, "POLL_S", 0.01)
    FakeWebserver.status_failures = 3
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 0
    captured = capsys.readouterr()
    assert "finished: COMPLETED_SUCCESS" in captured.out
    # Said once, not once a poll: the three failed polls came within a minute.
    assert captured.err.count("no answer from the webserver, trying again") == 1


def test_a_webserver_silent_for_longer_is_mentioned_again_once_a_report_interval(
    ended_backfill, capsys, monkeypatch
):
    monkeypatch.setattr(backfill, "POLL_S", 0.01)
    monkeypatch.setattr(backfill, "SILENCE_REPORT_S", 0.0)  # every poll is an interval apart
    FakeWebserver.status_failures = 3
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 0
    assert capsys.readouterr().err.count("no answer from the webserver, trying again") == 3


def test_wait_gives_up_following_with_its_own_exit_code_and_says_the_backfill_goes_on(
    ended_backfill, capsys, monkeypatch
):
    monkeypatch.setattr(backfill, "POLL_S", 0.01)
    monkeypatch.setattr(backfill, "POLL_PATIENCE_S", 0.1)
    FakeWebserver.status_failures = 10**6

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 3
    err = capsys.readouterr().err
    assert "it goes on in Dagster: follow it at" in err and "/runs/b/bf1" in err


def test_wait_does_not_poll_for_minutes_a_backfill_the_webserver_says_it_does_not_have(
    ended_backfill, capsys, monkeypatch
):
    monkeypatch.setattr(backfill, "POLL_S", 10.0)  # a retry would make this test slow
    FakeWebserver.status_gone = True

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 3
    assert "BackfillNotFoundError: no backfill bf1" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "code"), [("COMPLETED_SUCCESS", 3), ("FAILED", 1)])
def test_checks_that_cannot_be_listed_leave_a_failed_backfill_failed(
    ended_backfill, capsys, status, code
):
    FakeWebserver.backfill_status = status
    FakeWebserver.check_failures = 1

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == code
    assert "could not list the checks and steps that failed" in capsys.readouterr().err


def test_wait_reports_each_months_standing_a_retried_success_counting_as_done():
    runs = [
        _run("2026-07-01", "FAILURE"),
        _run("2026-07-01", "SUCCESS"),  # the daemon's retry
        _run("2026-08-01", "STARTED"),
        _run("2026-09-01", "FAILURE"),
        _run("2026-10-01", "QUEUED"),  # waiting for one of the queue's run slots
        _run("2026-11-01", "FAILURE"),
        _run("2026-11-01", "QUEUED"),  # its retry, waiting
        {"runId": "dashboard", "status": "QUEUED", "tags": []},
    ]

    assert month_progress(runs) == {
        "2026-07": "SUCCESS",
        "2026-08": "running",
        "2026-09": "FAILURE",
        "2026-10": "queued",
        "2026-11": "queued",
    }


@pytest.mark.e2e
def test_a_deployment_whose_code_failed_to_load_is_reported_with_its_load_error(tmp_path):
    env = clean_env(
        DAGSTER_HOME=str(make_dagster_home(tmp_path / "dagster_home")),
        D23_DATA_DIR=str(tmp_path / "data"),
        D23_START_MONTH="2026-13",
    )
    with webserver_process(env, tmp_path / "webserver.log") as server:
        launched = run_python(
            ["-m", "d23_pipeline.backfill", "2026-11", "2026-12", "--url", server.url], env
        )

    assert launched.returncode == 2
    # Not "AssetNotFoundError: Asset key ["d23", "raw_logs"] not found": the location has none.
    assert (
        "failed to load: d23_pipeline.settings.SettingsError: D23_START_MONTH must be a month"
        in (launched.stderr)
    )


@pytest.mark.parametrize("unfinished", ["FAILING", "CANCELING"])
def test_wait_follows_a_backfill_still_failing_or_canceling_to_its_end(
    ended_backfill: str, unfinished: str, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    FakeWebserver.backfill_status = unfinished
    polls = []

    def pause(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            FakeWebserver.backfill_status = "CANCELED"

    monkeypatch.setattr(backfill.time, "sleep", pause)
    main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"])

    assert "finished: CANCELED" in capsys.readouterr().out and len(polls) >= 2


def test_a_backfill_completed_with_failures_exits_non_zero(ended_backfill: str) -> None:
    FakeWebserver.backfill_status = "COMPLETED_FAILED"
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []  # no failed check to blame: the status

    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 1


def test_a_month_retried_after_a_failure_is_running() -> None:
    runs = [_run("2026-07-01", "FAILURE"), _run("2026-07-01", "STARTED")]
    assert month_progress(runs) == {"2026-07": "running"}


def test_wait_prints_a_month_once_per_change_and_counts_only_months_done(
    ended_backfill: str, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    FakeWebserver.backfill_status = "REQUESTED"
    FakeWebserver.backfill_runs = [
        _run("2026-07-01", "SUCCESS") | {"creationTime": 1.0},
        _run("2026-08-01", "STARTED") | {"creationTime": 1.0},
    ]
    FakeWebserver.run_checks = {"2026-07-01-SUCCESS": [], "2026-08-01-STARTED": []}
    polls = []

    def pause(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            FakeWebserver.backfill_status = "FAILED"

    monkeypatch.setattr(backfill.time, "sleep", pause)
    main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"])

    out = capsys.readouterr().out
    assert out.count("2026-07: SUCCESS") == 1
    assert "2026-08: running (1/2 months done)" in out


def test_months_that_end_in_one_poll_are_counted_in_turn(
    ended_backfill: str, capsys: pytest.CaptureFixture
) -> None:
    FakeWebserver.run_checks = {"2026-07-01-SUCCESS": [], "2026-08-01-SUCCESS": []}

    main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"])  # both done at the first poll

    out = capsys.readouterr().out
    assert "2026-07: SUCCESS (1/2 months done)\n  2026-08: SUCCESS (2/2 months done)" in out


def test_two_short_outages_with_an_answer_between_do_not_end_the_wait_and_are_each_mentioned(
    ended_backfill: str, monkeypatch, capsys: pytest.CaptureFixture
) -> None:
    FakeWebserver.backfill_status = "REQUESTED"
    FakeWebserver.run_checks["2026-08-01-SUCCESS"] = []
    monkeypatch.setattr(backfill, "POLL_PATIENCE_S", 0.3)
    real_sleep, polls = time.sleep, []

    def pause(seconds: float) -> None:
        polls.append(seconds)
        real_sleep(0.2)
        if len(polls) in (1, 3):  # each outage alone is shorter than the patience, not both
            FakeWebserver.status_failures = 1
        if len(polls) == 5:
            FakeWebserver.backfill_status = "COMPLETED_SUCCESS"

    monkeypatch.setattr(backfill.time, "sleep", pause)
    assert main(["2026-07", "2026-08", "--url", ended_backfill, "--wait"]) == 0
    # Both within a minute, but an answer came between: a new outage is said again.
    assert capsys.readouterr().err.count("no answer from the webserver, trying again") == 2


def test_help_reads_as_text_and_names_every_exit_code(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])

    out = " ".join(capsys.readouterr().out.split())
    assert stopped.value.code == 0
    assert out.count("Backfill a range of months from the command line.") == 1
    assert "``" not in out  # the docstring's markup
    assert "exit 0 only if" in out and ", 3 if" in out and "130 on Ctrl-C" in out
    assert "Exits 2, launching nothing," in out
