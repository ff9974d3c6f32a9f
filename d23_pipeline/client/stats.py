"""Thread-safe counters describing what the client did, for run metadata and tests."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from d23_pipeline.credentials import repeats_a_credential

# Names of fields outside the allowlist are reported (run metadata, the snapshot's manifest) so
# that an operator sees the API's schema change, but a name can carry data too (an API keying a
# value by a phone number or a note, or by a credential). Only names shaped like a field name
# that repeat no credential are shown, and only the first few: the others are counted under a
# placeholder.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_EXTRA_FIELD_NAMES = 20
WITHHELD_NAME = "<withheld: not shaped like a field name>"
WITHHELD_CREDENTIAL = "<withheld: it repeats a credential this client holds>"
FURTHER_NAMES = f"<further names past the first {MAX_EXTRA_FIELD_NAMES}, withheld>"


class ClientStats:
    """Counters shared by all worker threads of one client."""

    def __init__(self, page_limit: int, credentials: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._credentials = credentials
        self.requests = 0
        self.pages = 0
        self.empty_pages = 0
        self.rows = 0
        self.rejects = 0
        self.window_splits = 0
        self.count_splits = 0
        self.slice_rereads = 0
        self.slices_changed_after_read = 0
        self.slices_uncounted_after_read = 0
        self.shared_parts = 0
        self.limit_reductions = 0
        self.cursor_restarts = 0
        self.final_page_limit = page_limit
        self.token_refreshes = 0
        self.logins = 0
        self.retries: Counter[str] = Counter()
        self.extra_fields: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one of the integer counters."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def retry(self, cause: str) -> None:
        """Count one retry by its cause (``"429"``, ``"503"``, ``"timeout"``, ...)."""
        with self._lock:
            self.retries[cause] += 1

    def limit_reduced(self, new_limit: int) -> None:
        """Count a page-limit reduction and remember the smallest limit used."""
        with self._lock:
            self.limit_reductions += 1
            self.final_page_limit = min(self.final_page_limit, new_limit)

    def page(self, raw_rows: int, rows: int, rejects: int, extra_fields: Iterable[str]) -> None:
        """Count one API page: rows as received, and rows/rejects handed to the caller."""
        with self._lock:
            self.pages += 1
            self.empty_pages += raw_rows == 0
            self.rows += rows
            self.rejects += rejects
            names: set[str] = set()
            for name in sorted(extra_fields):
                names.add(self._reported_name(name, names))
            self.extra_fields.update(names)

    def _reported_name(self, name: str, this_page: set[str]) -> str:
        if not _FIELD_NAME.fullmatch(name):
            return WITHHELD_NAME
        if repeats_a_credential(name, self._credentials):
            return WITHHELD_CREDENTIAL
        listed = (self.extra_fields.keys() | this_page) - {
            WITHHELD_NAME,
            WITHHELD_CREDENTIAL,
            FURTHER_NAMES,
        }
        if name not in listed and len(listed) >= MAX_EXTRA_FIELD_NAMES:
            return FURTHER_NAMES
        return name

    def as_dict(self) -> dict[str, Any]:
        """A snapshot as plain ints and dicts (``extra_fields``: name -> pages it appeared on)."""
        with self._lock:
            return {
                "requests": self.requests,
                "pages": self.pages,
                "empty_pages": self.empty_pages,
                "rows": self.rows,
                "rejects": self.rejects,
                "retries": dict(self.retries),
                "window_splits": self.window_splits,
                "count_splits": self.count_splits,
                "slice_rereads": self.slice_rereads,
                "slices_changed_after_read": self.slices_changed_after_read,
                "slices_uncounted_after_read": self.slices_uncounted_after_read,
                "shared_parts": self.shared_parts,
                "limit_reductions": self.limit_reductions,
                "cursor_restarts": self.cursor_restarts,
                "final_page_limit": self.final_page_limit,
                "token_refreshes": self.token_refreshes,
                "logins": self.logins,
                "extra_fields": dict(self.extra_fields),
            }
