"""The sentinel: ransomware detection on a host's change stream, in either mode.

A :class:`Sentinel` gets every watcher batch (:meth:`Sentinel.on_batch`) and every
committed snapshot (:meth:`Sentinel.on_snapshot`), turns batches into feature windows
(:mod:`corestate.models.features`) and scores each window with the detector
(:mod:`corestate.models.detector`) after every batch, so an attack is judged while it
is still under way: the window so far, and its latest batch alone (the higher score
counts), because a window's share features average over its files, and files that show
nothing (media whose header an attack kept) would dilute one that shows encryption. Scoring, episodes, the attack start and the choice of the clean
snapshot are the same in both modes; only what an alert *does* differs:

- :class:`ProtectSentinel` (embedded, ``corestate protect``): raises the capture
  cadence, puts the clean snapshot on the repository's protection list and records the
  alert in its ledger;
- :class:`AgentSentinel` (distributed, the watching ``corestate agent``): the agent
  publishes the alert as an :class:`~corestate.schemas.events.Alert` event (a worker's guard role
  protects the clean snapshot, :mod:`corestate.pipeline.guard`); it learns which runs were
  committed, and as which restic snapshot, from ``SnapshotCommitted`` events.

Terms:

- *episode*: anomalous windows no more than ``cooldown`` seconds apart; one episode is
  one alert (later windows add paths to it and may raise its score; they do not raise
  new alerts). An alert that *grew* is announced again under the same id (below).
- *attack start*: when the episode's activity began. From the alerting window, the
  sentinel looks back through earlier *suspect* windows (scores above the detector's
  suspect threshold, with at least one file that looks encrypted) that follow each
  other within ``chain_gap`` seconds (a slow attack leaves one every few tens of
  seconds), at most ``lookback`` seconds. Busy but benign windows do not extend the
  chain: each would push the clean snapshot back past good changes. The
  earliest window's *lower bound* (when the batch before it was taken: no event in it is
  older) is certain but coarse: the watcher is not read while a snapshot is taken, so
  it may lie a whole snapshot before the activity. The window's files say more: the
  earliest change time (min of mtime and ctime) of its paths, minus ``slack`` seconds, is
  taken when it is later than the lower bound. (Files changed again later in the
  window, or given forged times, make that estimate late; ``slack`` covers the first.)
- *settled*: the time by which everything a snapshot holds had been read (embedded: when
  it was committed; distributed: when the agent's run was acknowledged by the brokers).
- *clean snapshot*: the last committed snapshot settled at or before the attack start,
  so no file it holds was read after the attack began; else the newest snapshot of the
  same host and paths from before this session (all of those were read before it).

What an alert does, in order: the mode's response (above; embedded: (1) the cadence
rises: the protector's interval is divided by ``boost`` for ``boost_seconds``, then
restored; (2) protection and ledger, retried at the next snapshot if a forget holds the
lock; distributed: the event is published); then the alert line is appended to the
alerts file, and ``on_alert`` is called (the CLI prints it). An alert that grew is
updated the same way, at most every ``update_every`` seconds and at close: the ledger
entry is replaced (embedded; its acked and released flags kept) or the event published
again with the same time and host, hence the same id, which the guard's ledger entry
takes (distributed); then a new line with the same id is appended to the alerts file.
*The last line of an id is the alert as it stands*, as ``corestate alerts list`` shows
it. In distributed mode, an alert whose clean snapshot would be a run not yet committed
waits for that commit, at most ``commit_wait`` seconds after the run was published,
before it is announced: a worker's lag must not make it name an older snapshot.

The sentinel also feeds the host's change counts to a change-rate forecast
(:mod:`corestate.models.forecast`); :meth:`Sentinel.proposed_interval` is the capture
cadence it proposes. It is advice (logged at each snapshot with ``-vv``): only an alert
changes the protector's interval.

The detector learns online from every closed window that neither alerted nor fell
inside an episode; its state is checkpointed to ``state_path`` every
``checkpoint_every`` seconds and on :meth:`Sentinel.close`, and loaded from there on
start (else the shipped prior). ``protect``'s checkpoint is signed with a key derived
from the repository's master key, so a checkpoint replaced by someone without it is
refused (:mod:`corestate.models.detector`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from corestate.agents.protect import DEFAULT_EXCLUDES, ConsistencyPoint, ProtectOptions
from corestate.errors import CoreStateError
from corestate.kernel.watch import ChangeBatch
from corestate.models.detector import Detector, Verdict
from corestate.models.features import FeatureConfig, FeatureExtractor, Window
from corestate.models.forecast import ChangeRateForecaster
from corestate.pipeline.capture import ExcludeMatcher
from corestate.repository.alerts import Alert, AlertLedger, alert_id, append_line
from corestate.repository.repository import Repository
from corestate.schemas import events
from corestate.telemetry import metrics

log = logging.getLogger("corestate.agents.sentinel")


@dataclass
class SentinelOptions:
    alerts_file: str | None = None  # alert lines are appended here
    state_path: str | None = None  # detector checkpoint
    state_key: bytes | None = None  # signs the checkpoint (see models.detector); None: unsigned
    host: str = field(default_factory=socket.gethostname)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    boost: float = 4.0  # interval divisor while an alert is fresh (embedded)
    boost_seconds: float = 600.0
    cooldown: float = 60.0
    chain_gap: float = 300.0
    lookback: float = 3600.0
    checkpoint_every: float = 60.0
    prime: bool = True  # sketch the existing files at start, in a background thread
    max_paths: int = 100  # paths listed per alert
    slack: float = 1.0  # seconds before the earliest change time of a window's files
    history: int = 4096  # closed windows and snapshots remembered
    commit_wait: float = 60.0  # distributed: how long an alert waits for a run's commit
    update_every: float = 2.0  # a grown alert is announced again at most this often


@dataclass(frozen=True)
class _Closed:
    start: float
    end: float
    lower_bound: float
    score: float
    suspect: bool
    first_change: float | None


@dataclass(frozen=True)
class _Point:
    snapshot_id: str
    settled: float


def _shown(alert: Alert) -> Alert:
    """The alert with its paths fit for JSON (and people): an alert keeps each path as
    ``os.fsdecode`` gives it, so that the event carries the raw bytes; a name that is not
    UTF-8 is shown with ``\\x`` escapes instead."""
    shown = [p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
             for p in alert.paths]
    return alert if shown == alert.paths else replace(alert, paths=shown)


class Sentinel:
    """Features + detector + episodes + the clean snapshot (see the module doc); what an
    alert does is left to :meth:`_respond` (nothing here)."""

    def __init__(self, paths: list[str], options: SentinelOptions | None = None, *,
                 excludes: list[str] | None = None, detector: Detector | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.paths = [os.path.abspath(p) for p in paths]
        self.excludes = list(excludes or [])
        self.options = options or SentinelOptions()
        self.detector = detector or Detector.load_or_prior(self.options.state_path,
                                                             self.options.state_key)
        ignore = [os.fsencode(os.path.abspath(p)) for p in
                  (self.options.alerts_file, self.options.state_path) if p]
        self.features = FeatureExtractor(self.options.features, ignore=ignore)
        self.forecaster = ChangeRateForecaster()
        self.on_alert = on_alert
        self.clock = clock
        self.started = clock()
        self.points: deque[_Point] = deque(maxlen=self.options.history)
        self.closed: deque[_Closed] = deque(maxlen=self.options.history)
        self.alerts: list[Alert] = []
        self.primed = threading.Event()
        self._stop = threading.Event()
        self._primer: threading.Thread | None = None
        self._window: Window | None = None
        self._window_max = 0.0
        self._window_alerted = False
        self._episode: Alert | None = None
        self._episode_last = -math.inf
        self._announced: set[str] = set()  # ids
        self._grown: list[Alert] = []  # announced alerts that grew since
        self._last_update = clock()
        self._last_checkpoint = clock()

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Begin sketching the existing files (background); idempotent."""
        if self._primer is not None or not self.options.prime:
            self.primed.set()
            return
        matcher = ExcludeMatcher(self.excludes)
        roots = [os.fsencode(p) for p in self.paths]

        def prime() -> None:
            try:
                n = self.features.prime(roots, matcher.excluded, stop=self._stop)
                log.debug("sketched %d existing files", n)
            except Exception:  # priming is an optimisation; never take the agent down
                log.exception("priming the sketch cache failed")
            finally:
                self.primed.set()

        self._primer = threading.Thread(target=prime, name="sentinel-prime", daemon=True)
        self._primer.start()

    def close(self) -> None:
        """Stop priming, finish what the response holds, write the checkpoint."""
        self._stop.set()
        if self._primer is not None:
            self._primer.join(timeout=10)
        self._finish()
        self._update_grown()
        self.checkpoint()

    def checkpoint(self) -> None:
        if self.options.state_path:
            try:
                self.detector.save(self.options.state_path, self.options.state_key)
            except OSError as exc:
                log.warning("cannot write the detector checkpoint %s: %s",
                            self.options.state_path, exc)
        self._last_checkpoint = self.clock()

    # -- inputs ------------------------------------------------------------------------
    def on_batch(self, batch: ChangeBatch) -> None:
        now = self.clock()
        self._tick(now)
        window = self.features.observe(batch, now)
        if window is not self._window:
            self._window, self._window_max, self._window_alerted = window, 0.0, False
        self.forecaster.observe(now, len(batch.kinds))
        verdict = self.detector.judge(window.features())
        if window.batches > 1:  # the latest batch alone: earlier files cannot dilute it
            alone = self.detector.judge(window.features(window.latest))
            if alone.score > verdict.score:
                verdict = alone
        metrics().anomaly_score(self.options.host, verdict.score)
        self._window_max = max(self._window_max, verdict.score)
        if verdict.alert:
            self._window_alerted = True
            self._alert(window, verdict, now)

    def on_snapshot(self, snapshot_id: str, settled: float) -> None:
        """A snapshot was committed; everything it holds had been read by ``settled``."""
        self.points.append(_Point(snapshot_id, settled))
        self.tick()

    def tick(self) -> None:
        """Time passes: close a window that is due, write a checkpoint that is due."""
        now = self.clock()
        self._tick(now)
        if self._grown and now - self._last_update >= self.options.update_every:
            self._update_grown()
        if now - self._last_checkpoint >= self.options.checkpoint_every:
            self.checkpoint()

    def proposed_interval(self, base: float = 2.0) -> float:
        """Seconds between snapshots that the change-rate forecast proposes."""
        return self.forecaster.propose_interval(max_interval=max(60.0, base))

    # -- windows -----------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        closed = self.features.advance(now)
        if closed is not None:
            self._close(closed, now)

    def _close(self, window: Window, now: float) -> None:
        x = window.features()
        verdict = self.detector.judge(x)
        alerted = self._window_alerted if window is self._window else False
        score = max(verdict.score, self._window_max if window is self._window else 0.0)
        if verdict.alert and not alerted:
            alerted = True
            self._alert(window, verdict, now)
        in_episode = now - self._episode_last <= self.options.cooldown
        if not alerted and not in_episode:
            self.detector.learn(x)
        suspect = (alerted or score >= self.detector.suspect_threshold) and window.scrambled() > 0
        self.closed.append(_Closed(window.start, window.last, window.lower_bound, score, suspect,
                                   window.first_change() if suspect else None))
        if window is self._window:
            self._window = None

    # -- alerts ------------------------------------------------------------------------
    def _alert(self, window: Window, verdict: Verdict, now: float) -> None:
        paths = [os.fsdecode(p) for p in window.paths()[: self.options.max_paths]]
        episode = self._episode
        if episode is not None and now - self._episode_last <= self.options.cooldown:
            self._episode_last = now
            new = [p for p in paths if p not in episode.paths]
            new = new[:max(0, 10 * self.options.max_paths - len(episode.paths))]
            if new or verdict.score > episode.score:
                episode.paths.extend(new)
                episode.score = max(episode.score, verdict.score)
                if episode not in self._grown:
                    self._grown.append(episode)
            return
        start = self._attack_start(window, now)
        metrics().anomaly_alert(self.options.host, verdict.score, verdict.threshold, len(window.paths()))
        x = window.features()
        alert = Alert(time=now, host=self.options.host, score=verdict.score,
                      threshold=verdict.threshold, reason=verdict.reason_text(), paths=paths,
                      clean_snapshot=None,
                      top_features=[(name, x[name]) for name, _ in verdict.reasons])
        self._episode, self._episode_last = alert, now
        self.alerts.append(alert)
        self._settle(alert, start, now)

    def _settle(self, alert: Alert, start: float, now: float) -> None:
        """Name the clean snapshot, then announce the alert."""
        alert.clean_snapshot = self._clean_snapshot(start)
        self._announce(alert, now)

    def _announce(self, alert: Alert, now: float) -> None:
        self._respond(alert, now)
        self._announced.add(alert.id)
        if alert in self._grown:  # grew while it waited: announced as it is now
            self._grown.remove(alert)
        shown = self._append(alert)
        log.warning("ALERT %s: score %.4f >= %.4f (%s); clean snapshot %s; %d paths, e.g. %s",
                    alert.id, alert.score, alert.threshold, alert.reason,
                    alert.clean_snapshot and alert.clean_snapshot[:8], len(alert.paths),
                    ", ".join(shown.paths[:3]))
        if self.on_alert is not None:
            self.on_alert(shown)

    def _append(self, alert: Alert) -> Alert:
        """Append the alert's line to the alerts file; return the alert as shown."""
        shown = _shown(alert)
        if self.options.alerts_file:
            try:
                append_line(self.options.alerts_file, shown)
            except OSError as exc:
                log.error("cannot append to the alerts file %s: %s", self.options.alerts_file, exc)
        return shown

    def _update_grown(self) -> None:
        """Announce again the alerts that grew (see the module docstring)."""
        self._last_update = self.clock()
        for alert in list(self._grown):
            if alert.id not in self._announced:
                continue  # still waiting for a commit: announced whole later
            self._grown.remove(alert)
            self._respond_grown(alert)
            self._append(alert)
            log.info("alert %s grew: score %.4f, %d paths", alert.id, alert.score, len(alert.paths))

    def _attack_start(self, window: Window, now: float) -> float:
        """When the anomalous activity began (see the module docstring)."""
        chain_start, lower, first = window.start, window.lower_bound, window.first_change()
        chained = 0
        for rec in reversed(self.closed):
            if chain_start - rec.end > self.options.chain_gap or now - rec.end > self.options.lookback:
                break
            if rec.suspect:
                chain_start, lower, first = rec.start, min(lower, rec.lower_bound), rec.first_change
                chained += 1
        start = lower if first is None else max(lower, first - self.options.slack)
        log.debug("attack start %.3f: %d earlier windows chained, lower bound %.3f, first "
                  "change %s", start, chained, lower, "none" if first is None else f"{first:.3f}")
        return start

    def _clean_snapshot(self, start: float) -> str | None:
        clean = [p for p in self.points if p.settled <= start and p.snapshot_id]
        if clean:  # the newest settled; commits may arrive out of order
            return max(clean, key=lambda p: p.settled).snapshot_id
        return self._earlier_snapshot(min(start, self.started))

    # -- what the modes decide -----------------------------------------------------------
    def _respond(self, alert: Alert, now: float) -> None:
        """What a new alert does (see the subclasses)."""

    def _respond_grown(self, alert: Alert) -> None:
        """What an announced alert that grew does (see the subclasses)."""

    def _earlier_snapshot(self, before: float) -> str | None:
        """The newest snapshot of this host and paths taken before ``before`` and before
        this session: all of them were read before it started."""
        return None

    def _finish(self) -> None:
        """At close: complete what the response still holds."""


class ProtectSentinel(Sentinel):
    """The sentinel of ``corestate protect``: an alert raises the protector's cadence,
    protects the clean snapshot and records the alert in the repository's ledger."""

    def __init__(self, repo: Repository, protect: ProtectOptions,
                 options: SentinelOptions | None = None, detector: Detector | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        options = options or SentinelOptions()
        if protect.hostname:
            options.host = protect.hostname
        if options.state_key is None:
            options.state_key = repo.key.derive("detector checkpoint")
        super().__init__(protect.paths, options, excludes=[*DEFAULT_EXCLUDES, *protect.excludes],
                         detector=detector, on_alert=on_alert, clock=clock)
        self.repo = repo
        self.protect = protect
        self.ledger = AlertLedger(repo)
        self._unrecorded: list[Alert] = []
        self._base_interval = protect.interval
        self._boost_until: float | None = None

    def on_point(self, point: ConsistencyPoint) -> None:
        """The protector committed a snapshot."""
        self.on_snapshot(point.summary.snapshot_id, point.committed)
        log.debug("forecast cadence proposal: every %.1fs", self.proposed_interval())
        self._retry_unrecorded()

    def proposed_interval(self, base: float | None = None) -> float:
        return super().proposed_interval(self._base_interval if base is None else base)

    def _tick(self, now: float) -> None:
        if self._boost_until is not None and now >= self._boost_until:
            self.protect.interval = self._base_interval
            self._boost_until = None
            log.info("capture cadence back to every %gs", self._base_interval)
        super()._tick(now)

    def _respond(self, alert: Alert, now: float) -> None:
        self._boost(now)
        self._record(alert)

    def _respond_grown(self, alert: Alert) -> None:
        self._record(alert)

    def _earlier_snapshot(self, before: float) -> str | None:
        paths = sorted(self.paths)
        try:
            snaps = [s for s in self.repo.list_snapshots()
                     if s.hostname == self.options.host and sorted(s.paths) == paths
                     and s.time / 1e9 < before]
        except CoreStateError as exc:
            log.warning("cannot list snapshots to find a clean one: %s", exc)
            return None
        return snaps[-1].id if snaps else None

    def _finish(self) -> None:
        self._retry_unrecorded()

    def _boost(self, now: float) -> None:
        if self._boost_until is None:
            self._base_interval = self.protect.interval
        self.protect.interval = self._base_interval / self.options.boost
        self._boost_until = now + self.options.boost_seconds
        log.info("capture cadence raised to every %gs for %gs", self.protect.interval,
                 self.options.boost_seconds)

    def _record(self, alert: Alert) -> None:
        try:
            self.ledger.record(_shown(alert))
        except CoreStateError as exc:
            log.warning("alert %s not yet recorded in the repository (%s); retrying at the "
                        "next snapshot", alert.id, exc)
            if alert not in self._unrecorded:
                self._unrecorded.append(alert)
            return
        if alert in self._unrecorded:
            self._unrecorded.remove(alert)

    def _retry_unrecorded(self) -> None:
        for alert in list(self._unrecorded):
            self._record(alert)


class AgentSentinel(Sentinel):
    """The sentinel of the watching ``corestate agent``: an alert becomes an
    :class:`~corestate.schemas.events.Alert` event in :attr:`outbox`, which the agent
    publishes on ``<prefix>.alerts`` (:meth:`drain`).

    The agent tells it of every run it published (:meth:`on_run`) and of every
    ``SnapshotCommitted`` it reads (:meth:`on_committed`); those of this host and paths
    are its snapshots: a run of this session settles when it was published, a snapshot
    of an earlier session is a fallback clean snapshot. An alert's id is the one the
    worker's guard records it under (:func:`~corestate.repository.alerts.alert_id`)."""

    def __init__(self, paths: list[str], options: SentinelOptions | None = None, *,
                 excludes: list[str] | None = None,
                 detector: Detector | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(paths, options, excludes=excludes, detector=detector,
                         on_alert=on_alert, clock=clock)
        self.outbox: list[events.Alert] = []
        self.runs: OrderedDict[str, float] = OrderedDict()  # run id -> settled
        self.committed_runs: set[str] = set()
        self.earlier: deque[tuple[float, str]] = deque(maxlen=self.options.history)
        self._held: list[tuple[Alert, float]] = []  # alerts waiting for a commit

    def on_run(self, run_id: str, settled: float | None = None) -> None:
        """A run of this session was published: every record acknowledged at ``settled``."""
        self.runs[run_id] = self.clock() if settled is None else settled
        while len(self.runs) > self.options.history:
            old, _ = self.runs.popitem(last=False)
            self.committed_runs.discard(old)

    def on_committed(self, event: events.SnapshotCommitted) -> None:
        """A snapshot was committed (any host: others are ignored)."""
        if event.host != self.options.host or sorted(event.paths) != sorted(self.paths):
            return
        settled = self.runs.get(event.snapshot_id)
        if settled is None:
            self.earlier.append((event.time.timestamp(), event.restic_id))
        elif event.snapshot_id not in self.committed_runs:
            self.committed_runs.add(event.snapshot_id)
            self.on_snapshot(event.restic_id, settled)
        self._release(self.clock())

    def _tick(self, now: float) -> None:
        super()._tick(now)
        self._release(now)

    def _waiting(self, start: float, now: float) -> bool:
        """Whether a run settled before ``start`` may still commit and would be a newer
        clean snapshot than any committed one."""
        best = max((p.settled for p in self.points if p.settled <= start), default=-math.inf)
        return any(best < settled <= start and run not in self.committed_runs
                   and now - settled <= self.options.commit_wait
                   for run, settled in self.runs.items())

    def _settle(self, alert: Alert, start: float, now: float) -> None:
        alert.id = alert_id(alert.to_event())  # the id the guard records it under
        if self._waiting(start, now):
            log.info("alert %s waits for the commit of the last run before the attack", alert.id)
            self._held.append((alert, start))
            return
        super()._settle(alert, start, now)

    def _release(self, now: float, force: bool = False) -> None:
        for item in list(self._held):
            alert, start = item
            if force or not self._waiting(start, now):
                self._held.remove(item)
                super()._settle(alert, start, now)

    def drain(self) -> list[events.Alert]:
        """The alert events to publish, oldest first; the outbox is emptied."""
        out, self.outbox = self.outbox, []
        return out

    def _respond(self, alert: Alert, now: float) -> None:
        self.outbox.append(alert.to_event())

    def _respond_grown(self, alert: Alert) -> None:
        self.outbox.append(alert.to_event())

    def _earlier_snapshot(self, before: float) -> str | None:
        older = [(t, rid) for t, rid in self.earlier if t < before]
        return max(older)[1] if older else None

    def _finish(self) -> None:
        self._release(self.clock(), force=True)
