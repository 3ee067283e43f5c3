"""The HTTP protocol of ``transferkit serve``: uvicorn's h11 protocol with a deadline for a request's headers.

uvicorn waits for the headers of a request without limit (its keep-alive timer only runs between requests, and
every byte received cancels it), so clients that connect and send header bytes one at a time (slowloris) could
hold every allowed connection (``--max-connections``) and shut everyone else out with 503s.  Here a connection
must deliver a request's complete headers within ``header_timeout`` seconds of opening, or of the previous
response; otherwise it is closed.  The body has its own deadline (:class:`transferkit.serve.app.BodyLimit`, 408).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("uvicorn.error")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's :class:`H11Protocol` plus a header deadline (seconds, a class attribute: ``--workers N``
    processes set it from the settings when they build the app)."""

    header_timeout: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are in: from here its body and answer have their deadlines
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next pipelined request at once
        if self.cycle is None or self.cycle.response_complete:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(type(self).header_timeout, self._headers_overdue)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its response arms the timer again
        if not self.transport.is_closing():
            client = "%s:%d - " % self.client if self.client else ""
            log.warning("%sclosed: no complete request headers within %g s", client, type(self).header_timeout)
            self.transport.close()
