"""The simulator's pages for the in-process benchmarks, each rendered once and then replayed.

A benchmark month is the simulator's own (its ties, its vocabulary), holding only this lender's
rows so that pages are full, as the month of deterministic pages this replaced had them. The
throughput benchmark times the reader, not a server: :class:`Replay` keeps every answer the
simulator renders, so once a first, untimed run has asked for them, a timed run costs the
source one dict lookup per page. Not every page: the client cuts a walk where it stands when an
idle worker asks for a share, so a timed run may ask for windows the first run did not; those
are rendered then, and counted and timed so that the benchmark can say what they cost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import httpx
import orjson

from d23_pipeline.settings import TokenCredentials
from d23_pipeline.simulator import Answer, SimResponse, Simulator, SimulatorConfig, in_process

BASE_URL = "http://bench.invalid"  # in process: never resolved
PATH_TEMPLATE = "/admin/v3/lenders/{lender}/exports/S4/D23"


def month_simulator(month: str, rows: int) -> Simulator:
    """A simulator of ``rows`` rows in ``month``, none of other tenants; its tokens outlive any
    benchmark."""
    config = SimulatorConfig(
        months=(month,), rows_per_month=rows, other_lender_share=0.0, token_ttl_s=86_400.0
    )
    return Simulator(config)


def held_token(sim: Simulator) -> TokenCredentials:
    """A token from one login, held as is: no login round trip in a timed run."""
    config = sim.config
    body = orjson.dumps({"email": config.email, "password": config.password})
    answer = sim.handle("POST", f"/admin/auth/{config.lender_slug}/login", {}, {}, body)
    assert isinstance(answer, SimResponse) and answer.status == 200, answer
    return TokenCredentials(sim.lender_public_id, answer.json()["token"])


class Replay:
    """A simulator's answers to export GETs, rendered on first request and replayed after.

    A replayed answer skips the simulator's token check: the request that had it rendered was
    checked, and a benchmark's token does not expire. Other requests, and answers other than
    200, go to the simulator every time.
    """

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.rendered = 0
        # Time spent in the simulator, wall clock summed over the client's threads.
        self.render_s = 0.0
        self._answers: dict[tuple[str, frozenset[tuple[str, str]]], SimResponse] = {}
        self._lock = threading.Lock()

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Answer:
        """``Simulator.handle``, from memory for an export GET answered before."""
        key = (path, frozenset(query.items()))
        if method == "GET" and (kept := self._answers.get(key)) is not None:
            return kept
        started = time.perf_counter()
        answer = self.sim.handle(method, path, query, headers, body)
        kept = method == "GET" and isinstance(answer, SimResponse) and answer.status == 200
        with self._lock:
            self.render_s += time.perf_counter() - started
            if kept:
                self._answers[key] = answer
                self.rendered += 1
        return answer

    def transport(self) -> httpx.MockTransport:
        """An in-process transport serving the replay."""
        return in_process(self.handle)
