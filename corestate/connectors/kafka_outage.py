"""What a worker says while the broker is away: one warning per interval, not the Kafka
client's error lines (aiokafka logs several per reconnect attempt, ~100 a second).

Terms:

- an *outage line* is a log record of the Kafka client libraries (aiokafka, faust's
  consumer and producer) about a connection, a metadata refresh or the group
  coordinator failing: :data:`OUTAGE_PATTERNS`;
- an *outage* starts at the first outage line and ends when none came for ``grace``
  seconds (:meth:`OutageReport.tick`, called periodically). A short one (a coordinator
  still loading at start-up, one reconnect) is not worth a line: the first warning
  comes only once the outage has lasted ``grace`` seconds, then one every
  ``interval`` seconds with the number of lines held back; its end is one line too.

>>> import logging
>>> said = []
>>> r = OutageReport("127.0.0.1:9092", grace=5, interval=30, say=said.append)
>>> line = logging.LogRecord("aiokafka", logging.ERROR, "", 0,
...     "Unable connect to node with id 1: [Errno 111] Connect call failed", None, None)
>>> [r.hold(line, now) for now in (0.0, 0.1, 4.0)]  # every line is held back
[False, False, False]
>>> r.hold(line, 6.0), said
(False, ['Kafka at 127.0.0.1:9092 has not answered for 6 s (Unable connect to node with id 1: [Errno 111] Connect call failed); retrying'])
>>> r.hold(line, 20.0), len(said)
(False, 1)
>>> r.hold(line, 37.0), said[-1]
(False, 'Kafka at 127.0.0.1:9092 has not answered for 37 s (2 more failures since the last warning); retrying')
>>> r.tick(40.0), r.tick(43.0), said[-1]
(None, None, 'Kafka at 127.0.0.1:9092 answers again after 43 s')
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

OUTAGE_PATTERNS = re.compile(
    r"Unable connect to node|Unable to update metadata|Failed fetch messages|"
    r"Group Coordinator Request failed|Coordinator .*(?:not available|dead)|NodeNotReady|"
    r"KafkaConnectionError|Connection at .* closed|Connect call failed|"
    r"GroupCoordinatorNotAvailable|NotCoordinator|RequestTimedOut|"
    r"Error sending .* to node|Got error produce response|Heartbeat failed", re.IGNORECASE)

CLIENT_LOGGERS = ("aiokafka", "faust.transport", "kafka")


class OutageReport:
    """Holds back outage lines and says what they mean (see the module docstring);
    ``say`` prints a warning."""

    def __init__(self, bootstrap: str, say: Callable[[str], None], grace: float = 5.0,
                 interval: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.say = say
        self.grace = grace
        self.interval = interval
        self.started: float | None = None  # the outage's first line
        self.last_line = 0.0
        self.warned_at: float | None = None
        self.held = 0  # lines since the last warning

    def hold(self, record: logging.LogRecord, now: float) -> bool:
        """Whether ``record`` may be printed: False for an outage line (held back)."""
        if not record.name.startswith(CLIENT_LOGGERS) or record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if not OUTAGE_PATTERNS.search(text):
            return True
        if self.started is None:
            self.started = now
        self.last_line = now
        self.held += 1
        lasted = now - self.started
        if self.warned_at is None:
            if lasted >= self.grace:
                first = " ".join(text.split())
                self.say(f"Kafka at {self.bootstrap} has not answered for {lasted:.0f} s "
                         f"({first}); retrying")
                self.warned_at, self.held = now, 0
        elif now - self.warned_at >= self.interval:
            self.say(f"Kafka at {self.bootstrap} has not answered for {lasted:.0f} s "
                     f"({self.held} more failures since the last warning); retrying")
            self.warned_at, self.held = now, 0
        return False

    def tick(self, now: float) -> None:
        """End the outage once no outage line came for ``grace`` seconds."""
        if self.started is None or now - self.last_line < self.grace:
            return
        if self.warned_at is not None:
            self.say(f"Kafka at {self.bootstrap} answers again after {now - self.started:.0f} s")
        self.started, self.warned_at, self.held = None, None, 0


class OutageFilter(logging.Filter):
    """A logging filter (on the root handlers) that passes records through an
    :class:`OutageReport`."""

    def __init__(self, report: OutageReport, clock: Callable[[], float]) -> None:
        super().__init__()
        self.report = report
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        return self.report.hold(record, self.clock())
