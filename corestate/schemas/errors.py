"""Errors of the event layer: bytes that are not an event, and events that cannot be encoded.

- :class:`UndecodableEventError`: the bytes of a record are not a CoreState event we can
  read. ``reason`` is one line meant for a dead letter (``DeadLetter.reason``); the record
  is never retried (it would fail the same way).
- :class:`UnknownSchemaError`: the bytes name a schema this reader does not know (a newer
  producer, or another application's record on our topic).
- :class:`UnexpectedEventError`: a valid event, but not the type the caller expected.
- :class:`InvalidEventError`: an event object that cannot be encoded (a value outside what
  its schema allows). A programming error in the producer, so also a ``ValueError``.
"""

from __future__ import annotations

from corestate.errors import IntegrityError, PermanentError


class UndecodableEventError(IntegrityError):
    """The bytes are not a CoreState event; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())  # one line, whatever the cause said
        super().__init__(f"undecodable event: {self.reason}")


class UnknownSchemaError(UndecodableEventError):
    """The record names a schema (fingerprint or registry id) that this reader cannot resolve."""


class UnexpectedEventError(UndecodableEventError):
    """The record is a valid event of another type than the one expected."""


class InvalidEventError(PermanentError, ValueError):
    """An event whose values its schema cannot carry."""
