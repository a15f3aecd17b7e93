"""The sentinel: ransomware detection wired into the protect loop (embedded mode).

A :class:`Sentinel` gets every watcher batch (:meth:`Sentinel.on_batch`) and every
committed snapshot (:meth:`Sentinel.on_point`) from a
:class:`~corestate.agents.protect.Protector`, turns batches into feature windows
(:mod:`corestate.models.features`) and scores each window with the detector
(:mod:`corestate.models.detector`) after every batch, so an attack is judged while it
is still under way.

Terms:

- *episode*: anomalous windows no more than ``cooldown`` seconds apart; one episode is
  one alert (later windows add paths to it, they do not raise new alerts).
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
- *clean snapshot*: the last snapshot *committed* at or before the attack start, so no
  file it holds was read after the attack began; else the newest earlier snapshot of the
  same host and paths in the repository.

What an alert does, in order: (1) capture cadence rises: the protector's interval is
divided by ``boost`` for ``boost_seconds``, then restored; (2) the clean snapshot is put
on the repository's protection list and the alert recorded in its ledger
(:class:`~corestate.models.alerts.AlertLedger`; retried at the next snapshot if a
forget holds the lock); (3) the alert line is appended to the alerts file;
(4) ``on_alert`` is called (the CLI prints it). Later windows of the same episode add
their paths to the recorded alert at the next snapshot.

The sentinel also feeds the host's change counts to a change-rate forecast
(:mod:`corestate.models.forecast`); :meth:`Sentinel.proposed_interval` is the capture
cadence it proposes. It is advice (logged at each snapshot with ``-vv``): only an alert
changes the protector's interval.

The detector learns online from every closed window that neither alerted nor fell
inside an episode; its state is checkpointed to ``state_path`` every
``checkpoint_every`` seconds and on :meth:`Sentinel.close`, and loaded from there on
start (else the shipped prior).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from corestate.agents.protect import DEFAULT_EXCLUDES, ConsistencyPoint, ProtectOptions
from corestate.errors import CoreStateError, PermanentError
from corestate.kernel.watch import ChangeBatch
from corestate.pipeline.capture import ExcludeMatcher
from corestate.repository.repository import Repository

try:
    from corestate.models.alerts import Alert, AlertLedger, append_line
    from corestate.models.detector import Detector, Verdict
    from corestate.models.features import FeatureConfig, FeatureExtractor, Window
    from corestate.models.forecast import ChangeRateForecaster
except ModuleNotFoundError as _exc:  # River (and numpy) come with the models extra
    if _exc.name not in ("river", "numpy", "scipy"):
        raise
    raise PermanentError("anomaly detection needs River: pip install 'corestate[models]'"
                         ) from None

log = logging.getLogger("corestate.agents.sentinel")


@dataclass
class SentinelOptions:
    alerts_file: str | None = None  # alert lines are appended here
    state_path: str | None = None  # detector checkpoint
    host: str = field(default_factory=socket.gethostname)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    boost: float = 4.0  # interval divisor while an alert is fresh
    boost_seconds: float = 600.0
    cooldown: float = 60.0
    chain_gap: float = 300.0
    lookback: float = 3600.0
    checkpoint_every: float = 60.0
    prime: bool = True  # sketch the existing files at start, in a background thread
    max_paths: int = 100  # paths listed per alert
    slack: float = 1.0  # seconds before the earliest change time of a window's files
    history: int = 4096  # closed windows and snapshots remembered


@dataclass(frozen=True)
class _Closed:
    start: float
    end: float
    lower_bound: float
    score: float
    suspect: bool
    first_change: float | None


class Sentinel:
    """Features + detector + alert actions for one protector (see the module doc)."""

    def __init__(self, repo: Repository, protect: ProtectOptions,
                 options: SentinelOptions | None = None, detector: Detector | None = None,
                 on_alert: Callable[[Alert], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.protect = protect
        self.options = options or SentinelOptions()
        if protect.hostname:
            self.options.host = protect.hostname
        self.detector = detector or Detector.load_or_prior(self.options.state_path)
        ignore = [os.fsencode(os.path.abspath(p)) for p in
                  (self.options.alerts_file, self.options.state_path) if p]
        self.features = FeatureExtractor(self.options.features, ignore=ignore)
        self.ledger = AlertLedger(repo)
        self.forecaster = ChangeRateForecaster()
        self.on_alert = on_alert
        self.clock = clock
        self.started = clock()
        self.points: deque[ConsistencyPoint] = deque(maxlen=self.options.history)
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
        self._unrecorded: list[Alert] = []
        self._base_interval = protect.interval
        self._boost_until: float | None = None
        self._last_checkpoint = clock()

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Begin sketching the existing files (background); idempotent."""
        if self._primer is not None or not self.options.prime:
            self.primed.set()
            return
        matcher = ExcludeMatcher([*DEFAULT_EXCLUDES, *self.protect.excludes])
        roots = [os.fsencode(os.path.abspath(p)) for p in self.protect.paths]

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
        """Stop priming, close the open window, write the checkpoint."""
        self._stop.set()
        if self._primer is not None:
            self._primer.join(timeout=10)
        self._retry_unrecorded()
        self.checkpoint()

    def checkpoint(self) -> None:
        if self.options.state_path:
            try:
                self.detector.save(self.options.state_path)
            except OSError as exc:
                log.warning("cannot write the detector checkpoint %s: %s",
                            self.options.state_path, exc)
        self._last_checkpoint = self.clock()

    # -- protector callbacks ---------------------------------------------------------
    def on_batch(self, batch: ChangeBatch) -> None:
        now = self.clock()
        self._tick(now)
        window = self.features.observe(batch, now)
        if window is not self._window:
            self._window, self._window_max, self._window_alerted = window, 0.0, False
        self.forecaster.observe(now, len(batch.kinds))
        verdict = self.detector.judge(window.features())
        self._window_max = max(self._window_max, verdict.score)
        if verdict.alert:
            self._window_alerted = True
            self._alert(window, verdict, now)

    def proposed_interval(self) -> float:
        """Seconds between snapshots that the change-rate forecast proposes."""
        return self.forecaster.propose_interval(max_interval=max(60.0, self._base_interval))

    def on_point(self, point: ConsistencyPoint) -> None:
        self.points.append(point)
        now = self.clock()
        self._tick(now)
        log.debug("forecast cadence proposal: every %.1fs", self.proposed_interval())
        self._retry_unrecorded()
        if now - self._last_checkpoint >= self.options.checkpoint_every:
            self.checkpoint()

    # -- windows -----------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if self._boost_until is not None and now >= self._boost_until:
            self.protect.interval = self._base_interval
            self._boost_until = None
            log.info("capture cadence back to every %gs", self._base_interval)
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
            if new and len(episode.paths) < 10 * self.options.max_paths:
                episode.paths.extend(new)
                episode.score = max(episode.score, verdict.score)
                if episode not in self._unrecorded:  # written at the next snapshot
                    self._unrecorded.append(episode)
            return
        start = self._attack_start(window, now)
        x = window.features()
        alert = Alert(time=now, host=self.options.host, score=verdict.score,
                      threshold=verdict.threshold, reason=verdict.reason_text(), paths=paths,
                      clean_snapshot=self._clean_snapshot(start),
                      top_features=[(name, x[name]) for name, _ in verdict.reasons])
        self._episode, self._episode_last = alert, now
        self.alerts.append(alert)
        self._boost(now)
        self._record(alert)
        if self.options.alerts_file:
            try:
                append_line(self.options.alerts_file, alert)
            except OSError as exc:
                log.error("cannot append to the alerts file %s: %s", self.options.alerts_file, exc)
        log.warning("ALERT %s: score %.4f >= %.4f (%s); clean snapshot %s; %d paths, e.g. %s",
                    alert.id, alert.score, alert.threshold, alert.reason,
                    alert.clean_snapshot and alert.clean_snapshot[:8], len(paths),
                    ", ".join(paths[:3]))
        if self.on_alert is not None:
            self.on_alert(alert)

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
        for point in reversed(self.points):
            if point.committed <= start and point.summary.snapshot_id:
                return point.summary.snapshot_id
        # nothing committed in this session before the attack: an earlier snapshot of the
        # same host and paths (all of them were committed before this session started)
        paths = sorted(os.path.abspath(p) for p in self.protect.paths)
        try:
            snaps = [s for s in self.repo.list_snapshots()
                     if s.hostname == self.options.host and sorted(s.paths) == paths
                     and s.time / 1e9 < min(start, self.started)]
        except CoreStateError as exc:
            log.warning("cannot list snapshots to find a clean one: %s", exc)
            return None
        return snaps[-1].id if snaps else None

    def _boost(self, now: float) -> None:
        if self._boost_until is None:
            self._base_interval = self.protect.interval
        self.protect.interval = self._base_interval / self.options.boost
        self._boost_until = now + self.options.boost_seconds
        log.info("capture cadence raised to every %gs for %gs", self.protect.interval,
                 self.options.boost_seconds)

    def _record(self, alert: Alert) -> None:
        try:
            self.ledger.record(alert)
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
