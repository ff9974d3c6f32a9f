"""The credentials a client holds, and whether text a server sent repeats one of them.

A server (or a gateway) may echo what it was sent, or what it knows, in a request id, a header,
a protocol error quoting its bytes, or an extra field's name; those are shown in errors, the run
log and run metadata. So each is screened against every credential the client holds (its
password, each token and refresh token it was given), whichever request it answers: a data
request carries only the token, but an API may still echo the password there.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Iterator
from html import escape
from urllib.parse import quote, quote_plus

# How ``httpx.Request.extensions`` carries the client's credentials to the code that screens
# what its answer shows (httpx hands extensions it does not know to the transport, which ignores
# them).
REQUEST_EXTENSION = "d23_held_credentials"
# Shorter than 4 characters, a credential turns up in ids by chance ('7' in most hex ids); 8 in
# a row of a longer one is an echo of it, even cut.
SHORTEST_CREDENTIAL = 4
_ECHO_CHARS = 8


class HeldCredentials:
    """The credentials one client holds; thread-safe, and only ever added to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: frozenset[str] = frozenset()

    def hold(self, *credentials: str | None) -> None:
        """Screen what servers show against these too (``None`` and short ones are skipped)."""
        kept = {c for c in credentials if c and len(c) >= SHORTEST_CREDENTIAL}
        with self._lock:
            self._held |= kept

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)


def repeats_a_credential(text: str, credentials: Iterable[str]) -> bool:
    """Whether ``text`` holds 8 characters in a row (or the whole, from 4) of a credential,
    in any form a server quoting it might use."""
    runs_of_text: set[str] | None = None
    for credential in credentials:
        runs, short_forms = _echoes(credential)
        if any(form in text for form in short_forms):
            return True
        if runs_of_text is None:
            runs_of_text = {text[i : i + _ECHO_CHARS] for i in range(len(text) - _ECHO_CHARS + 1)}
        if not runs_of_text.isdisjoint(runs):
            return True
    return False


# Cached: a gateway answering 504 to every wide window has each of its request ids screened. A
# client holds a credential more for each token refresh: room for a long run's.
@functools.lru_cache(maxsize=1024)
def _echoes(credential: str) -> tuple[frozenset[str], frozenset[str]]:
    """The 8-character runs of ``credential``'s echoed forms, and its forms shorter than 8."""
    runs: set[str] = set()
    short_forms: set[str] = set()
    for form in _echoed_forms(credential):
        if len(form) < _ECHO_CHARS:
            short_forms.add(form)
        else:
            runs.update(form[i : i + _ECHO_CHARS] for i in range(len(form) - _ECHO_CHARS + 1))
    return frozenset(runs), frozenset(short_forms)


def _echoed_forms(secret: str) -> set[str]:
    # A gateway that quotes the request back may JSON-escape it (non-ASCII as \uXXXX or not,
    # '/' as '\/' or not), HTML-escape it or percent-encode it, and Python shows text and bytes
    # it quotes escaped (ascii(): non-ASCII as \xfc; a protocol error's bytes as UTF-8, \xc3\xbc):
    # the credential is as readable in those forms as in its own.
    escaped = json.dumps(secret)[1:-1]
    return {
        secret,
        escaped,
        escaped.replace("/", "\\/"),
        json.dumps(secret, ensure_ascii=False)[1:-1],
        escape(secret),
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        ascii(secret)[1:-1],
        repr(secret.encode())[2:-1],
    }
