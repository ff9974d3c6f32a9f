"""``python -m d23_pipeline.backfill FIRST LAST``: backfill a range of months from the command line.

It asks the running Dagster webserver for exactly what the asset graph's "Materialize" dialog
launches: an asset backfill of every D23 asset, one run per month, each retried on its own by the
daemon. (``dagster job backfill`` marks its backfill finished as soon as the runs are queued, and
the daemon does not retry runs of a finished backfill.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from base64 import b64encode
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from d23_pipeline.credentials import SHORTEST_CREDENTIAL, repeats_a_credential
from d23_pipeline.months import months_between
from d23_pipeline.settings import SettingsError, read_ui_port, validate_month
from d23_pipeline.wording import counted

DEFAULT_URL = "http://127.0.0.1:3000"
UNFINISHED = {"REQUESTED", "CANCELING", "FAILING"}
# How a month stands, from the statuses of its runs (a retried month has several): any success
# makes it done, any run going makes it running, one waiting for a slot queued, otherwise its
# last word is a failure.
_MONTH_STANDING = (
    ("SUCCESS", {"SUCCESS"}),
    ("running", {"STARTING", "STARTED", "CANCELING"}),
    ("queued", {"QUEUED", "NOT_STARTED"}),
    ("FAILURE", {"FAILURE"}),
    ("CANCELED", {"CANCELED"}),
)

LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}"""
CANCEL_BACKFILL = """
mutation CancelBackfill($id: String!) {
  cancelPartitionBackfill(backfillId: $id) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL_STATUS = """
query BackfillStatus($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      runs(limit: 1000) { runId status creationTime tags { key value } }
    }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}"""


PARTITION_KEYS = """
query PartitionKeys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { partitionKeys }
    ... on AssetNotFoundError { message }
  }
}"""
LOCATION_LOAD_ERRORS = """
query LocationLoadErrors {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on PythonError { message errorChain { error { message } } }
        }
      }
    }
  }
}"""
RUN_CHECK_EVALUATIONS = """
query RunCheckEvaluations($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor, limit: 1000) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        ... on AssetCheckEvaluationEvent {
          evaluation { checkName success severity description assetKey { path } }
        }
        ... on ExecutionStepFailureEvent {
          stepKey
          error { message errorChain { error { message } } }
        }
        ... on RunFailureEvent { runFailure: message }
        ... on RunCanceledEvent { runCanceled: message }
      }
    }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}"""
DAEMON_HEALTH = """
query DaemonHealth {
  instance { daemonHealth { daemonStatus(daemonType: "BACKFILL") { healthy } } }
}"""
NO_DAEMON = (
    "warning: no Dagster daemon runs backfills for this webserver's instance (none has reported "
    "in lately), so no month of this backfill starts until one does: `make run` starts one, or "
    "run `dagster-daemon run -w workspace.yaml` with the webserver's DAGSTER_HOME"
)
# Backfills whose runs may still be going: launching runs (REQUESTED), or ending them.
RUNNING_BACKFILLS = """
query RunningBackfills {
  running: partitionBackfillsOrError(
    filters: {statuses: [REQUESTED, CANCELING, FAILING]}, limit: 1000
  ) {
    __typename
    ... on PartitionBackfills {
      results {
        id status partitionNames partitionSetName assetSelection { path } tags { key value }
      }
    }
    ... on PythonError { message }
  }
}"""
# Every monthly D23 asset shares one partitioning; this one stands for all of them.
PARTITIONED_ASSET = ["d23", "raw_logs"]
ASSET_KEYS = """
query AssetKeys {
  assetNodes { assetKey { path } }
}"""


# On the backfills this command launches to yield, as it does, to one of their months launched at
# the same moment: one launched from the UI, or with --anyway, goes on whatever else runs.
YIELDS_TAG = {"d23/yields_at_launch": "true"}
# A cancel, asked up to this many times, is looked at this long after: a daemon tick over the
# backfill that read it before the cancel has written it back by then.
CANCEL_TRIES = 3
CANCEL_SETTLE_S = 2.0


class BackfillError(RuntimeError):
    """The webserver refused or could not answer a backfill request."""


class WebserverUnreachable(BackfillError):
    """No answer, or a 5xx that is not Dagster's own (a proxy's, a restarting webserver's);
    ``sent``: the request reached the webserver (or a proxy) first, so it may have acted on it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class LaunchAnswerLost(BackfillError):
    """The launch request reached the webserver, but its answer did not come back."""


class LostTrackError(RuntimeError):
    """The webserver stopped answering while a launched backfill went on."""


# Said when nothing took the connection: no webserver, or the wrong address.
NOT_RUNNING_HINT = " (is `make run` running? --url names a webserver elsewhere)"
POLL_S = 5.0
# How often --wait asks again whether a daemon runs, while it waits.
DAEMON_CHECK_S = 60.0
# How long --wait keeps polling a webserver that does not answer (a restart, a proxy's 502)
# before it gives up on following the backfill, which goes on regardless.
POLL_PATIENCE_S = 300.0
# How often a silent webserver is mentioned again while it is polled.
SILENCE_REPORT_S = 60.0


def month_partitions(first: str, last: str) -> list[str]:
    """Partition keys of the months ``first`` to ``last`` (``YYYY-MM``), both included."""
    months = months_between(validate_month(first, "FIRST"), validate_month(last, "LAST"))
    if not months:
        raise SettingsError(f"LAST ({last}) is before FIRST ({first})")
    return [f"{month}-01" for month in months]


def local_url(env: Mapping[str, str]) -> str:
    """The webserver ``make run`` starts with ``env``: on 127.0.0.1, at ``D23_UI_PORT``."""
    return f"http://127.0.0.1:{read_ui_port(env)}"


def webserver_url(value: str) -> str:
    """``--url``: an http(s) address with a host, and no query or fragment (the paths this tool
    appends would land inside them, and a token there would be printed with every link)."""
    try:
        httpx.URL(value)  # what the requests are given: urlsplit drops a tab or a line break
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is no number
    except (ValueError, httpx.InvalidURL):  # UnicodeError (a host IDNA refuses) is a ValueError
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("--url must be http(s)://HOST[:PORT][/PATH]")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            "--url must hold no query or fragment ('?' or '#'); a proxy's credentials go in it "
            "as http(s)://USER:PASSWORD@HOST"
        )
    return value


def shown_url(url: str) -> str:
    """``url`` as printed: without the user and password a proxy in front of Dagster may take."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _webserver(url: str) -> str:
    return f"Dagster webserver at {shown_url(url)}"


PROXY_CREDENTIALS_WITHHELD = "(withheld: it repeats the proxy credentials in --url)"


def _proxy_credentials(url: str) -> list[str]:
    """The proxy credentials in ``url`` as a proxy refusing them may echo them back: the
    password, and the Authorization header's base64 of user and password."""
    parts = urlsplit(url)
    if parts.password is None:
        return []
    user, password = unquote(parts.username or ""), unquote(parts.password)
    basic = b64encode(f"{user}:{password}".encode()).decode()
    return [c for c in (password, basic) if len(c) >= SHORTEST_CREDENTIAL]


def graphql(url: str, document: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST one GraphQL document to the webserver at ``url``; its ``data``, or BackfillError."""
    credentials = _proxy_credentials(url)
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/graphql",
            json={"query": document, "variables": variables},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        said = PROXY_CREDENTIALS_WITHHELD if repeats_a_credential(str(exc), credentials) else exc
        raise WebserverUnreachable(f"{_webserver(url)} did not answer: {said}", sent=sent) from None
    # Nothing of an answer that quotes them is shown, wherever in it they are (an error, a
    # page, a name in its data); Dagster's webserver never does, a proxy refusing them may.
    if repeats_a_credential(response.text, credentials):
        raise WebserverUnreachable(
            f"{_webserver(url)} answered {response.status_code} with text that repeats the "
            f"proxy credentials in --url: {PROXY_CREDENTIALS_WITHHELD}",
            sent=True,
        )
    # The webserver answers a failed request with a 500 whose body says why (GraphQL errors,
    # or data holding a PythonError that the caller reports): show that, not the status.
    try:
        body = response.json()
    except ValueError:
        body = {}
    if body.get("errors"):
        reasons = "; ".join(str(e.get("message", e)) for e in body["errors"])
        raise BackfillError(f"{_webserver(url)} refused the request: {reasons}")
    if not body.get("data"):
        message = f"{_webserver(url)} answered {response.status_code}: {response.text[:500]}"
        if response.status_code >= 500 and not body:
            raise WebserverUnreachable(message, sent=True)
        raise BackfillError(message)
    return body["data"]


def check_partitions(url: str, partition_keys: Sequence[str]) -> None:
    """Refuse months the running deployment has no partition for, naming its first and last."""
    result = graphql(url, PARTITION_KEYS, {"assetKey": {"path": PARTITIONED_ASSET}})
    node = result["assetNodeOrError"]
    if node["__typename"] != "AssetNode":
        raise BackfillError(
            _location_load_error(url) or f"{node['__typename']}: {node.get('message', node)}"
        )
    known = set(node["partitionKeys"])
    missing = [key[:7] for key in partition_keys if key not in known]
    if missing:
        span = f"{min(known)[:7]} to {max(known)[:7]}" if known else "none (check D23_START_MONTH)"
        raise SettingsError(
            f"no partition for {', '.join(missing)}: the deployment at {shown_url(url)} has "
            f"months {span}"
        )


def _location_load_error(url: str) -> str | None:
    """Why a code location of the deployment failed to load (a bad setting, say), if one did:
    then it has no D23 assets, and "asset not found" would hide the cause."""
    workspace = graphql(url, LOCATION_LOAD_ERRORS, {})["workspaceOrError"]
    for entry in workspace.get("locationEntries", []):
        error = entry["locationOrLoadError"]
        if error and error["__typename"] == "PythonError":
            chain = [error["message"], *(link["error"]["message"] for link in error["errorChain"])]
            return (
                f"code location {entry['name']} of the deployment at {shown_url(url)} failed to "
                f"load: {chain[-1].strip()} (fix it, then reload the location on the UI's "
                "Deployment page or restart make run)"
            )
    return None


def d23_asset_paths(url: str) -> list[list[str]]:
    """The key paths of the D23 assets the deployment at ``url`` has."""
    # The deployment's own assets, not this process's definitions: loading those would be slow
    # and would need the run's settings (D23_WAREHOUSE_DSN, say) just to queue a backfill.
    nodes = graphql(url, ASSET_KEYS, {})["assetNodes"]
    return [node["assetKey"]["path"] for node in nodes if _is_d23(node["assetKey"]["path"])]


def _is_d23(path: Sequence[str]) -> bool:
    """Whether an asset key's path is one of this project's (``d23/...``)."""
    return path[0] == "d23"


def running_backfills(url: str, partition_keys: Sequence[str] | None) -> list[dict[str, Any]]:
    """The deployment's D23 backfills whose runs may still be going (launching them, canceling
    or failing), newest first (in the order the instance stored them), for any of
    ``partition_keys`` (None: for any month), or for months Dagster cannot list (``null``
    partitionNames: the assets' partitions differ, or the definitions changed): their id,
    status, partitionNames and assetSelection."""
    listed = graphql(url, RUNNING_BACKFILLS, {})["running"]
    if listed["__typename"] != "PartitionBackfills":
        raise BackfillError(f"{listed['__typename']}: {listed.get('message', listed)}")
    return [
        backfill
        for backfill in listed["results"]
        if _targets_d23(backfill) and _share_months(backfill, partition_keys)
    ]


def _share_months(backfill: dict[str, Any], partition_keys: Sequence[str] | None) -> bool:
    """Whether ``backfill`` may have any of ``partition_keys`` (None: months not known)."""
    names = backfill["partitionNames"]
    return names is None or partition_keys is None or bool(set(names) & set(partition_keys))


def _targets_d23(backfill: dict[str, Any]) -> bool:
    """Whether a backfill materializes D23 assets: an asset backfill selecting one, or a backfill
    of a D23 job (which names its partition set, not its assets; every D23 job's name starts
    with ``d23_``)."""
    assets = backfill["assetSelection"] or []
    return any(_is_d23(key["path"]) for key in assets) or (
        backfill["partitionSetName"] or ""
    ).startswith("d23_")


def same_backfill(
    running: Sequence[dict[str, Any]], partition_keys: Sequence[str], paths: Sequence[list[str]]
) -> dict[str, Any] | None:
    """The backfill still launching runs that does what launching ``partition_keys`` of
    ``paths`` would: the same months, every one of those assets, a failed month retried whole."""
    for backfill in running:
        if _same_months_and_assets(backfill, partition_keys, paths) and _retries_whole_months(
            backfill
        ):
            return backfill
    return None


def _same_months_and_assets(
    backfill: dict[str, Any], partition_keys: Sequence[str], paths: Sequence[list[str]]
) -> bool:
    selected = [key["path"] for key in backfill["assetSelection"] or []]
    return (
        backfill["status"] == "REQUESTED"
        and set(backfill["partitionNames"] or ()) == set(partition_keys)
        and all(path in selected for path in paths)
    )


def _retries_whole_months(backfill: dict[str, Any]) -> bool:
    """Whether a failed month of the backfill is retried read included, as this command's are
    (one launched from the asset graph's dialog retries only the failed steps)."""
    from d23_pipeline.defs.keys import RETRY_WHOLE_RUN_TAGS  # imports dagster: only here

    return RETRY_WHOLE_RUN_TAGS.items() <= _tags(backfill).items()


def _tags(backfill: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in backfill.get("tags") or ()}


def overlap_error(
    url: str,
    running: Sequence[dict[str, Any]],
    partition_keys: Sequence[str],
    paths: Sequence[list[str]],
) -> str:
    """Why a backfill is not launched beside ``running``, and what to do instead."""
    wanted = set(partition_keys)

    def shared(backfill: dict[str, Any]) -> str:
        if backfill["partitionNames"] is None:
            return "months Dagster cannot list"
        return ", ".join(sorted(key[:7] for key in wanted & set(backfill["partitionNames"])))

    def standing(backfill: dict[str, Any]) -> str:
        if _same_months_and_assets(backfill, partition_keys, paths):
            # Followed, a month of it that fails on an unverified slice would stay failed.
            return "running, but a failed month of it is retried from its failed step only"
        return _STATUS_WORDS.get(backfill["status"], "running")

    which = "; ".join(
        f"backfill {backfill['id']} ({standing(backfill)}) has {shared(backfill)} (follow or "
        f"cancel it at {backfill_page(url, backfill['id'])})"
        for backfill in running
    )
    return (
        f"not launched: {which}. A month in two backfills is read twice, one run after the "
        "other. Wait for it or cancel it, then launch again, or launch anyway with --anyway"
    )


_STATUS_WORDS = {"CANCELING": "being canceled", "FAILING": "failing, its runs ending"}


def launch_backfill(
    url: str, partition_keys: Sequence[str], paths: Sequence[list[str]], *, yields: bool
) -> str:
    """Launch an asset backfill of the assets ``paths`` for ``partition_keys``; return its id.
    ``yields``: to a backfill of its months launched at the same moment (:func:`launched_before`),
    as its tags say."""
    from d23_pipeline.defs.keys import RETRY_WHOLE_RUN_TAGS  # imports dagster: only here

    tags = {"dagster/from_ui": "true", **RETRY_WHOLE_RUN_TAGS, **(YIELDS_TAG if yields else {})}
    params = {
        "tags": [{"key": key, "value": value} for key, value in tags.items()],
        "assetSelection": [{"path": path} for path in paths],
        "partitionNames": list(partition_keys),
        "fromFailure": False,
    }
    try:
        data = graphql(url, LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})
    except WebserverUnreachable as exc:
        if not exc.sent:
            raise
        # Launched again, the same months could run twice.
        raise LaunchAnswerLost(
            f"{exc}; the launch request reached it, so the backfill may have been launched: look "
            f"at {shown_url(url).rstrip('/')}/runs/b before launching again"
        ) from exc
    result = data["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"{result['__typename']}: {result.get('message', result)}")
    return result["backfillId"]


def launched_before(
    url: str, backfill_id: str, partition_keys: Sequence[str]
) -> list[dict[str, Any]]:
    """The running D23 backfills sharing a month with ``backfill_id`` that the instance stored
    before it and that go on: the backfills ``backfill_id`` yields to.

    Another launch of these months at the same moment passes the look before launching, as this
    one did. Each looks again once launched, and yields to those stored before it, which it
    sees, as the one stored first sees none: of the two, one goes on. Of those stored before,
    the ones that go on are found as each found them, oldest first: one launched to yield
    (:data:`YIELDS_TAG`) that shares a month with an older one that goes on has yielded to it;
    one being canceled or failing launches no more runs.
    """
    running = running_backfills(url, None)
    ours = next((i for i, b in enumerate(running) if b["id"] == backfill_id), None)
    if ours is None:  # already ended: nothing to yield to
        return []
    going_on: list[dict[str, Any]] = []
    for backfill in reversed(running[ours + 1 :]):
        yielded = YIELDS_TAG.items() <= _tags(backfill).items() and any(
            _share_months(backfill, b["partitionNames"]) for b in going_on
        )
        if backfill["status"] == "REQUESTED" and not yielded:
            going_on.append(backfill)
    return [b for b in going_on if _share_months(b, partition_keys)]


def cancel_backfill(url: str, backfill_id: str) -> None:
    """Cancel ``backfill_id``: the daemon launches no more of its runs and stops those going.
    Asked again while it still shows as running: the daemon, in the middle of a tick over it,
    writes back the copy it read before, undoing the cancel."""
    for _ in range(CANCEL_TRIES):
        result = graphql(url, CANCEL_BACKFILL, {"id": backfill_id})["cancelPartitionBackfill"]
        if result["__typename"] != "CancelBackfillSuccess":
            raise BackfillError(
                f"{result['__typename']}: {result.get('message', result)}; cancel it at "
                f"{backfill_page(url, backfill_id)}"
            )
        time.sleep(CANCEL_SETTLE_S)
        status = {b["id"]: b["status"] for b in running_backfills(url, None)}.get(backfill_id)
        if status != "REQUESTED":
            return
    raise BackfillError(
        f"it still shows as running after {CANCEL_TRIES} cancels; cancel it at "
        f"{backfill_page(url, backfill_id)}"
    )


def backfill_status(url: str, backfill_id: str) -> dict[str, Any]:
    """The backfill's ``status`` and its ``runs`` (runId, status, tags) as the webserver reports."""
    result = graphql(url, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if result["__typename"] != "PartitionBackfill":
        raise BackfillError(f"{result['__typename']}: {result.get('message', result)}")
    return result


def _month_of(run: dict[str, Any]) -> str | None:
    """``YYYY-MM`` of a backfill run's partition; None for the unpartitioned dashboard's run."""
    partition = next((t["value"] for t in run["tags"] if t["key"] == "dagster/partition"), None)
    return partition[:7] if partition else None


def month_progress(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each month's standing (``SUCCESS``, ``running``, ``queued``, ``FAILURE``, ``CANCELED``)
    from the backfill's runs; months whose runs have not been created yet are absent."""
    statuses: dict[str, set[str]] = {}
    for run in runs:
        if month := _month_of(run):
            statuses.setdefault(month, set()).add(run["status"])
    return {
        month: next((name for name, kinds in _MONTH_STANDING if seen & kinds), "running")
        for month, seen in sorted(statuses.items())
    }


# How the report names a backfill's one run without a partition, the dashboard's.
DASHBOARD = "dashboard"


def deciding_runs(
    runs: Sequence[dict[str, Any]], *, dashboard: bool = False
) -> dict[str, dict[str, Any]]:
    """Per month (and, with ``dashboard``, for the dashboard's run), the run whose outcome
    stands: its latest success, else its latest run."""
    deciding: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: (r["status"] == "SUCCESS", r["creationTime"])):
        if label := _month_of(run) or (DASHBOARD if dashboard else None):
            deciding[label] = run
    return deciding


def run_events(url: str, run_id: str) -> list[dict[str, Any]]:
    """Run ``run_id``'s check evaluations (``evaluation``), step failures (``stepKey``,
    ``error``) and run failure (``runFailure``); its other events come back empty."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        result = graphql(url, RUN_CHECK_EVALUATIONS, {"runId": run_id, "cursor": cursor})
        events = result["logsForRun"]
        if events["__typename"] != "EventConnection":
            raise BackfillError(f"{events['__typename']}: {events.get('message', events)}")
        found += [e for e in events["events"] if e]
        if not events["hasMore"]:
            return found
        cursor = events["cursor"]


def _first_line(text: str | None) -> str:
    return next(iter((text or "").splitlines()), "")


def _root_cause(error: dict[str, Any]) -> str:
    """The first line of the deepest error a step failure chains (the pipeline's own, not
    Dagster's "Error occurred while executing op")."""
    chain = [link["error"] for link in error.get("errorChain") or []]
    message = (chain[-1] if chain else error)["message"] or ""
    first = _first_line(message)
    if first.endswith("failed with ERROR severity:"):
        # Dagster's failed blocking checks: a line per asset naming them follows.
        named = [line.strip() for line in message.splitlines()[1:] if line.strip()]
        return " ".join([first, "; ".join(named)]).rstrip()
    return first


def report_failures(url: str, runs: Sequence[dict[str, Any]], months: Sequence[str]) -> bool:
    """Print every check that failed in each month's deciding run, why each step of a failed
    one failed (the dashboard's run's too), why a run ended outside its steps, and each of
    ``months`` (``YYYY-MM``) the backfill ended without running; whether a check was an ERROR."""
    errors = False
    deciding = deciding_runs(runs, dashboard=True)
    for month, run in deciding.items():
        events = run_events(url, run["runId"])
        for evaluation in (e["evaluation"] for e in events if "evaluation" in e):
            if evaluation["success"]:
                continue
            errors = errors or evaluation["severity"] == "ERROR"
            asset = "/".join(evaluation["assetKey"]["path"])
            why = _first_line(evaluation["description"])
            print(
                f"  {month}: check {asset} {evaluation['checkName']} failed "
                f"({evaluation['severity']}){': ' + why if why else ''}",
                flush=True,
            )
        steps = [e for e in events if "stepKey" in e]
        for failure in steps:
            print(f"  {month}: step {failure['stepKey']} failed: {_root_cause(failure['error'])}")
        # A run's failure message repeats its steps'; one that ended outside them (make run's
        # sweep, run monitoring) and a cancel, which its interrupted step does not name, are said.
        for event in events:
            if "runFailure" in event and not steps:
                print(f"  {month}: run failed: {_first_line(event['runFailure'])}")
            if "runCanceled" in event:
                print(f"  {month}: run canceled: {_first_line(event['runCanceled'])}")
        if run["status"] == "CANCELED" and not any("runCanceled" in e for e in events):
            print(f"  {month}: run canceled")
    for month in months:
        if month not in deciding:
            print(f"  {month}: not run: the backfill ended before launching its run")
    return errors


def daemon_runs_backfills(url: str) -> bool | None:
    """Whether a daemon runs the instance's backfills; None if the webserver does not say."""
    try:
        status = graphql(url, DAEMON_HEALTH, {})["instance"]["daemonHealth"]["daemonStatus"]
    except (BackfillError, KeyError, TypeError):
        return None
    return None if status.get("healthy") is None else bool(status["healthy"])


def warn_without_daemon(url: str) -> None:
    """Say so on stderr when no daemon runs backfills: the backfill would wait in silence."""
    if daemon_runs_backfills(url) is False:
        print(NO_DAEMON, file=sys.stderr, flush=True)


def backfill_page(url: str, backfill_id: str) -> str:
    """The backfill's page in the Dagster UI, its months' standing shown."""
    # No tab named: Dagster 1.13's page has no "partitions" tab, and shows nothing for it.
    return f"{shown_url(url).rstrip('/')}/runs/b/{backfill_id}"


def wait_for_backfill(url: str, backfill_id: str, months: int) -> dict[str, Any]:
    """Poll until the backfill ends, printing each month whose standing changes; the ended
    backfill's status and runs. A webserver that stops answering is polled again for
    ``POLL_PATIENCE_S``, then :class:`LostTrackError`."""
    shown: dict[str, str] = {}
    silent_since: float | None = None
    said_silent_at: float | None = None  # when this outage was last mentioned
    daemon_checked = time.monotonic()
    while True:
        if time.monotonic() - daemon_checked > DAEMON_CHECK_S:
            warn_without_daemon(url)
            daemon_checked = time.monotonic()
        try:
            backfill = backfill_status(url, backfill_id)
        except WebserverUnreachable as exc:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > POLL_PATIENCE_S:
                raise LostTrackError(
                    f"stopped following backfill {backfill_id} after {POLL_PATIENCE_S:g} s "
                    f"without an answer ({exc}); it goes on in Dagster: follow it at "
                    f"{backfill_page(url, backfill_id)}"
                ) from None
            # Said when the silence starts, then once a minute: not a line a poll.
            if said_silent_at is None or time.monotonic() >= said_silent_at + SILENCE_REPORT_S:
                print(f"  (no answer from the webserver, trying again: {exc})", file=sys.stderr)
                said_silent_at = time.monotonic()
            time.sleep(POLL_S)
            continue
        silent_since = said_silent_at = None
        # Counted line by line: months that ended in one poll each add theirs in turn.
        for month, standing in month_progress(backfill["runs"]).items():
            if shown.get(month) != standing:
                shown[month] = standing
                done = sum(seen == "SUCCESS" for seen in shown.values())
                print(f"  {month}: {standing} ({done}/{months} months done)", flush=True)
        if backfill["status"] not in UNFINISHED:
            return backfill
        time.sleep(POLL_S)


_HELP = (
    "Backfill a range of months from the command line. It asks the running Dagster webserver "
    "for exactly what the asset graph's Materialize dialog launches: an asset backfill of every "
    "D23 asset, one run per month, each retried on its own by the daemon."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m d23_pipeline.backfill",
        description=_HELP,
        epilog="Exits 2, launching nothing, when the months, the URL or the webserver's answer "
        "do not allow the backfill (the error says why; one launched at the same moment as "
        "another of its months is canceled), and 3 when the webserver took the launch request "
        "but its answer was lost, or the launch could not be told from one at the same moment, "
        "or yielding to one could not cancel it (the backfill may run: the error says where to "
        "look).",
    )
    parser.add_argument("first", metavar="FIRST", help="first month, YYYY-MM")
    parser.add_argument("last", metavar="LAST", help="last month, YYYY-MM (included)")
    parser.add_argument(
        "--url",
        type=webserver_url,
        help=f"Dagster webserver (default {DEFAULT_URL}, or make run's D23_UI_PORT on 127.0.0.1 "
        "when set); never printed with its user or password",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait until the backfill finishes, then list the checks and steps that failed; "
        "exit 0 only if every month succeeded and no ERROR check failed, 3 if the webserver "
        "stopped answering meanwhile, 130 on Ctrl-C (the backfill goes on)",
    )
    parser.add_argument(
        "--anyway",
        action="store_true",
        help="launch even when a running backfill has some of these months (each such month is "
        "then read twice, one run after the other)",
    )
    args = parser.parse_args(argv)
    try:
        args.url = args.url or local_url(os.environ)
        keys = month_partitions(args.first, args.last)
        check_partitions(args.url, keys)
        paths = d23_asset_paths(args.url)
        running = [] if args.anyway else running_backfills(args.url, keys)
        # The oldest: a newer one of the same months, launched at the same moment, yields to it.
        following = same_backfill(running[::-1], keys, paths)
        if running and following is None:
            raise BackfillError(overlap_error(args.url, running, keys, paths))
        backfill_id = (
            following["id"]
            if following
            else launch_backfill(args.url, keys, paths, yields=not args.anyway)
        )
    except LaunchAnswerLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (SettingsError, BackfillError) as exc:
        unreachable = isinstance(exc, WebserverUnreachable) and not exc.sent
        print(f"error: {exc}{NOT_RUNNING_HINT if unreachable else ''}", file=sys.stderr)
        return 2
    canceled = None
    if not following and not args.anyway:
        look = f"Look at {shown_url(args.url).rstrip('/')}/runs/b before launching again"
        try:
            earlier = launched_before(args.url, backfill_id, keys)
        except BackfillError as exc:
            print(
                f"error: backfill {backfill_id} is launched, but whether one launched at the same "
                f"moment shares its months could not be settled: {exc}. {look}",
                file=sys.stderr,
            )
            return 3
        if earlier:
            try:
                cancel_backfill(args.url, backfill_id)
            except BackfillError as exc:
                print(
                    f"error: backfill {backfill_id} is launched at the same moment as another of "
                    f"these months ({', '.join(b['id'] for b in earlier)}), and could not be "
                    f"canceled: {exc}. {look}",
                    file=sys.stderr,
                )
                return 3
            canceled = (
                f"backfill {backfill_id}, launched at the same moment as another of these months, "
                "is canceled"
            )
            following = same_backfill(earlier, keys, paths)
            if following is None:
                error = overlap_error(args.url, earlier, keys, paths)
                print(f"error: {canceled}: {error}", file=sys.stderr)
                return 2
            backfill_id = following["id"]
    months = counted(len(keys), "month")
    if following:
        print(
            f"Backfill {backfill_id} of the same {months} is already running: not launched again "
            f"(--anyway launches another){f'; {canceled}' if canceled else ''}"
        )
    else:
        print(f"Backfill {backfill_id}: {months}, {keys[0][:7]} to {keys[-1][:7]}")
    print(f"Follow it at {backfill_page(args.url, backfill_id)}", flush=True)
    warn_without_daemon(args.url)
    if not args.wait:
        return 0
    try:
        backfill = wait_for_backfill(args.url, backfill_id, len(keys))
    except (LostTrackError, BackfillError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(
            f"\nStopped following backfill {backfill_id}; it goes on in Dagster: follow it at "
            f"{backfill_page(args.url, backfill_id)}",
            file=sys.stderr,
        )
        return 130
    print(f"Backfill {backfill_id} finished: {backfill['status']}", flush=True)
    succeeded = backfill["status"] == "COMPLETED_SUCCESS"
    try:
        check_errors = report_failures(args.url, backfill["runs"], [key[:7] for key in keys])
    except BackfillError as exc:
        print(f"error: could not list the checks and steps that failed: {exc}", file=sys.stderr)
        return 3 if succeeded else 1
    return 0 if succeeded and not check_errors else 1


if __name__ == "__main__":
    sys.exit(main())
