"""A cancel token for work that runs in a thread and cannot be interrupted (a model load).

The waiting side gives up (a timeout, a newer version, a delete) by calling
:meth:`CancelToken.cancel`; the working side, before it makes its result
visible, calls :meth:`CancelToken.commit`. Exactly one of the two wins, under
one lock, so a result is either committed (and the waiter learns so) or
abandoned (and the worker throws it away) — never half of each.
"""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """The work was abandoned before it committed; nothing it did is visible."""


class CancelToken:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "running"
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> bool:
        """Abandon the work; False when it has already committed (its result stands)."""
        with self._lock:
            if self._state == "committed":
                return False
            if self._state == "running":
                self._state, self.reason = "cancelled", reason
            return True

    def commit(self) -> bool:
        """Claim the right to make the result visible; False when cancelled (throw the result away)."""
        with self._lock:
            if self._state == "running":
                self._state = "committed"
            return self._state == "committed"

    @property
    def cancelled(self) -> bool:
        return self._state == "cancelled"

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancelled (cheap; call between steps of long work)."""
        if self._state == "cancelled":
            raise Cancelled(self.reason)
