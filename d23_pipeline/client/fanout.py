"""Work on several slices at once, handing their events to one consumer in bounded memory."""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from d23_pipeline.client.retry import Cancelled

Item = TypeVar("Item")
Event = TypeVar("Event")
P = ParamSpec("P")
R = TypeVar("R")

# Seconds a closing consumer waits for workers; a worker still inside a request exits by itself
# (daemon thread) as soon as that request returns, because it sees the cancel flag.
_JOIN_BUDGET_S = 5.0
_WORKER_EXIT = object()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


Deliver = Callable[[object], None]


def in_callers_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, to run on another thread in a copy of the calling thread's context variables (a
    new thread starts with none): what the caller set holds for its work in the client's threads
    too, as the landing's refusal of pandas to its libraries' probes does
    (d23_pipeline/pandas_probes.py)."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.copy().run(fn, *args, **kwargs)  # one copy a call: threads run at once

    return run


def fan_out(
    take: Callable[[threading.Event], Item | None],
    work: Callable[[Item, threading.Event, Deliver], None],
    *,
    workers: int,
    name: str,
) -> Generator[Event, None, None]:
    """Run ``work(item, cancel, deliver)`` on ``workers`` threads for every item ``take(cancel)``
    gives them, until it gives ``None``, and yield what they ``deliver``, in the order delivered.

    ``take`` may block: work can appear while others work (a share of a running walk). The queue
    holds at most two events per worker: a slow consumer blocks the workers instead of letting
    pages pile up in memory. The first worker error stops the others and is raised here; closing
    the generator early stops the workers too.
    """
    events: queue.Queue[object] = queue.Queue(maxsize=2 * workers)
    cancel = threading.Event()
    closed = threading.Event()

    def deliver(event: object, *, final: bool = False) -> None:
        while True:
            try:
                events.put(event, timeout=0.05)
                return
            except queue.Full:
                if closed.is_set() or (cancel.is_set() and not final):
                    raise Cancelled from None

    def worker() -> None:
        outcome: object = _WORKER_EXIT
        try:
            while not cancel.is_set() and (item := take(cancel)) is not None:
                work(item, cancel, deliver)
        except Cancelled:
            pass
        except BaseException as exc:  # handed to the consumer, which re-raises it
            cancel.set()
            outcome = _Failed(exc)
        with contextlib.suppress(Cancelled):
            deliver(outcome, final=True)

    threads = [
        threading.Thread(target=in_callers_context(worker), name=f"{name}-{number}", daemon=True)
        for number in range(workers)
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            event = events.get()
            if event is _WORKER_EXIT:
                running -= 1
            elif isinstance(event, _Failed):
                raise event.error
            else:
                yield event  # type: ignore[misc]
    finally:
        closed.set()
        cancel.set()
        deadline = time.monotonic() + _JOIN_BUDGET_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
