"""The anomaly detector: an online River pipeline over window features, a calibrated
alert threshold, reasons, and checkpoints.

Terms:

- *score*: :meth:`ChangeAnomalyDetector.score_one` of a window's features
  (:mod:`corestate.models.features`), 0.0 to 1.0; **a high score means the window is
  unlike the normal work the model has learned**.
- *threshold*: the score from which a window raises an alert; *calibrated* as a quantile
  of the scores of held-out simulated normal work plus a margin
  (``benchmarks/train_prior.py``). *Suspect threshold*: a lower quantile; windows above
  it are not alerts, but an alert looks back through them to find when an attack began.
- *reasons*: the features furthest above their normal values, in standard deviations of
  the windows learned so far (the deviation is floored at 5% of the feature's range, so
  a feature that was always 0 does not divide by zero).
- *prior*: the detector trained on simulated normal work and shipped in the package
  (``prior.pkl``); a host starts from it and adapts online, learning only from windows
  that do not alert, so an attack does not teach the model that attacks are normal.
- *checkpoint*: a :class:`Detector` saved to a state file, written atomically; loading
  one restores exactly what was learned. The file is a header (:data:`CHECKPOINT_MAGIC`),
  a flag, an optional *signature* and a pickle (format, River version and feature names
  beside the detector). A checkpoint lives in a directory the user (or ransomware
  running as the user) can write, so loading never trusts it: the pickle is read by an
  unpickler that resolves only the classes a detector is made of
  (:data:`CHECKPOINT_CLASSES`: no function that could run code), and where a *key* is
  known (``corestate protect``: derived from the repository's master key) the file must
  carry that key's HMAC-SHA256 signature of the pickle. A checkpoint that fails either
  check is *refused*: set aside as ``NAME.refused`` and replaced by the shipped prior,
  with one warning. The shipped prior and the agent's checkpoint (the agent holds no
  repository key) are unsigned.

Why Half-Space Trees (``kind="hst"``), measured by ``benchmarks/train_prior.py
--compare`` (``benchmarks/RESULTS.md``, "Anomaly detector choice"): on windows of
simulated normal work and of seven attack styles, with thresholds calibrated on a
held-out day,

- HST and a standard-scaled one-class SVM both detect every style at the first attacked
  file with no false alarm on two test days (mixed work and build-heavy work);
  incremental LOF misses five of the seven styles and costs ~10 ms per window (~100x).
- The SVM separates with more headroom and is cheaper, but it is a linear model trained
  by SGD, and this detector keeps learning on the host: after living through four more
  simulated days online, its weights had drifted and it missed every attack style at
  its calibrated threshold. HST still detected all seven at the first file, with no
  false alarm in those four days. Its state is a fixed set of random trees whose
  reference masses are rebuilt every ``window_size`` windows: adaptation moves what is
  dense, never which directions are watched.
- HST costs constant time (~120 µs per window) and fixed memory (trees x 2^height nodes,
  a 1.6 MiB checkpoint); its score is bounded in [0, 1], so a calibrated threshold keeps
  its meaning as the model adapts. It wants features in [0, 1]; they have documented
  ranges, so a fixed :class:`RangeScaler` maps them without learning anything.

>>> det = ChangeAnomalyDetector(n_trees=5, height=6, window_size=20, seed=1)
>>> quiet = dict.fromkeys(FEATURE_NAMES, 0.0) | {"write_rate": 0.4, "entropy": 4.5, "compress_ratio": 0.3}
>>> for _ in range(60):
...     det.learn_one(quiet)
>>> attack = quiet | {"opaque_share": 1.0, "entropy": 8.0, "entropy_gain": 4.0, "similarity_loss": 1.0}
>>> det.score_one(attack) > det.score_one(quiet)
True
>>> [name for name, _ in det.explain_one(attack)]
['opaque_share', 'similarity_loss', 'entropy_gain']
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import importlib.resources
import io
import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

from river import anomaly, base, compose, preprocessing

from corestate.errors import PermanentError
from corestate.kernel.atomic import write_atomic
from corestate.models.features import FEATURE_NAMES, LIMITS

CHECKPOINT_FORMAT = 2
CHECKPOINT_MAGIC = b"corestate detector checkpoint 2\n"
SIGNED, UNSIGNED = b"S", b"U"
PRIOR_RESOURCE = "prior.pkl"
# (module, name) of every class a checkpoint's pickle may name: what a Detector is made of.
CHECKPOINT_CLASSES = frozenset({
    ("builtins", "tuple"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("functools", "partial"), ("random", "Random"),
    ("corestate.models.detector", "Detector"),
    ("corestate.models.detector", "ChangeAnomalyDetector"),
    ("corestate.models.detector", "RangeScaler"), ("corestate.models.detector", "_Moments"),
    ("river.anomaly.hst", "HalfSpaceTrees"), ("river.compose.pipeline", "Pipeline"),
    ("river.tree.padded", "PaddedBranch"), ("river.tree.padded", "PaddedLeaf"),
})

log = logging.getLogger(__name__)


class CheckpointRefused(PermanentError):
    """A detector checkpoint that is not loaded: unsigned or wrongly signed where a key is
    known, of another format, or naming a class outside :data:`CHECKPOINT_CLASSES`."""


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CHECKPOINT_CLASSES:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of a "
                                         "detector")
        return super().find_class(module, name)
KINDS = ("hst", "svm", "ilof")


class RangeScaler(base.Transformer):
    """Maps each feature from its documented range to [0, 1], clipping outside values.

    Nothing is learned: ``limits`` are fixed (default: the feature table's ranges).

    >>> RangeScaler({"a": (0.0, 8.0)}).transform_one({"a": 6.0, "b": 2.0})
    {'a': 0.75, 'b': 1.0}
    """

    def __init__(self, limits: dict[str, tuple[float, float]] | None = None) -> None:
        self.limits = limits

    def transform_one(self, x: dict[Any, Any]) -> dict[Any, Any]:
        limits = self.limits if self.limits is not None else LIMITS
        out = {}
        for k, v in x.items():
            lo, hi = limits.get(k, (0.0, 1.0))
            out[k] = min(1.0, max(0.0, (float(v) - lo) / (hi - lo)))
        return out


@dataclass
class _Moments:
    """Running mean and variance of one feature (Welford)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, v: float) -> None:
        self.n += 1
        delta = v - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


class ChangeAnomalyDetector(base.AnomalyDetector):
    """Scaler + anomaly detector over window features; a high score means anomalous.

    Parameters
    ----------
    kind
        ``"hst"``: :class:`RangeScaler` then ``anomaly.HalfSpaceTrees`` (the choice, see
        the module docstring); ``"svm"``: ``StandardScaler`` then ``anomaly.OneClassSVM``;
        ``"ilof"``: ``StandardScaler`` then ``anomaly.LocalOutlierFactor``.
    n_trees, height, window_size
        Half-Space Trees' parameters: the reference mass profile is rebuilt every
        ``window_size`` learned windows.
    seed
        Seeds the random trees: the same seed and the same windows give the same scores.

    >>> det = ChangeAnomalyDetector(seed=7)
    >>> det.score_one(dict.fromkeys(FEATURE_NAMES, 0.0))  # knows nothing yet
    0.0
    """

    def __init__(self, kind: str = "hst", n_trees: int = 25, height: int = 10,
                 window_size: int = 500, seed: int | None = 42) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.model = self._make_model()
        self.moments: dict[str, _Moments] = {}
        self.learned = 0

    def _make_model(self) -> compose.Pipeline:
        if self.kind == "hst":
            return compose.Pipeline(
                RangeScaler(),
                anomaly.HalfSpaceTrees(n_trees=self.n_trees, height=self.height,
                                       window_size=self.window_size, seed=self.seed))
        if self.kind == "svm":
            return compose.Pipeline(preprocessing.StandardScaler(), anomaly.OneClassSVM(nu=0.05))
        return compose.Pipeline(preprocessing.StandardScaler(),
                                anomaly.LocalOutlierFactor(n_neighbors=10))

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"n_trees": 5, "height": 6, "window_size": 30, "seed": 1}

    def learn_one(self, x: dict[Any, Any]) -> None:
        self.model.learn_one(dict(x))
        for name, v in x.items():
            self.moments.setdefault(name, _Moments()).update(float(v))
        self.learned += 1

    def score_one(self, x: dict[Any, Any]) -> float:
        return float(self.model.score_one(dict(x)))

    def deviations(self, x: dict[Any, Any]) -> dict[str, float]:
        """How far each feature is above its mean, in (floored) standard deviations."""
        out = {}
        for name, v in x.items():
            m = self.moments.get(name)
            lo, hi = LIMITS.get(name, (0.0, 1.0))
            floor = 0.05 * (hi - lo)
            mean, std = (m.mean, m.std) if m is not None else (0.0, 0.0)
            out[name] = (float(v) - mean) / max(std, floor)
        return out

    def explain_one(self, x: dict[Any, Any], top: int = 3) -> list[tuple[str, float]]:
        """The ``top`` features furthest above normal, with their deviation (sigma)."""
        dev = self.deviations(x)
        ranked = sorted(dev.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(k, round(v, 1)) for k, v in ranked[:top]]


@dataclass(frozen=True)
class Verdict:
    """A scored window: its score, the thresholds it was judged by, and the reasons."""

    score: float
    threshold: float
    suspect_threshold: float
    reasons: list[tuple[str, float]] = field(default_factory=list)

    @property
    def alert(self) -> bool:
        return self.score >= self.threshold

    @property
    def suspect(self) -> bool:
        return self.score >= self.suspect_threshold

    def reason_text(self) -> str:
        """e.g. ``opaque_share +19.0σ, entropy_gain +8.2σ, similarity_loss +6.1σ``."""
        return ", ".join(f"{name} {z:+.1f}σ" for name, z in self.reasons)


class Detector:
    """A :class:`ChangeAnomalyDetector` with its calibrated thresholds.

    :meth:`judge` scores without learning; :meth:`learn` adapts (the caller decides
    which windows to learn from: those that did not alert).
    """

    def __init__(self, model: ChangeAnomalyDetector | None = None, threshold: float = 1.0,
                 suspect_threshold: float | None = None) -> None:
        self.model = model if model is not None else ChangeAnomalyDetector()
        self.threshold = threshold
        self.suspect_threshold = threshold if suspect_threshold is None else suspect_threshold
        self.calibration: dict[str, float] = {}

    @property
    def learned(self) -> int:
        return self.model.learned

    def judge(self, x: dict[str, float], top: int = 3) -> Verdict:
        score = self.model.score_one(x)
        reasons = self.model.explain_one(x, top) if score >= self.suspect_threshold else []
        return Verdict(score, self.threshold, self.suspect_threshold, reasons)

    def learn(self, x: dict[str, float]) -> None:
        self.model.learn_one(x)

    def calibrate(self, normal_scores: list[float], quantile: float = 0.999,
                  margin: float = 0.02, suspect_quantile: float = 0.99) -> None:
        """Set the thresholds from scores of held-out normal windows."""
        if not normal_scores:
            raise ValueError("calibration needs scores of normal windows")
        ordered = sorted(normal_scores)
        q = _quantile(ordered, quantile)
        self.threshold = q + margin
        self.suspect_threshold = _quantile(ordered, suspect_quantile)
        self.calibration = {"quantile": quantile, "margin": margin, "q_score": q,
                            "suspect_quantile": suspect_quantile, "windows": len(ordered),
                            "max_score": ordered[-1]}

    # -- checkpoints ------------------------------------------------------------------
    def dumps(self, key: bytes | None = None) -> bytes:
        """The checkpoint's bytes, signed with ``key`` when one is given."""
        doc = {"format": CHECKPOINT_FORMAT, "river": importlib.metadata.version("river"),
               "features": FEATURE_NAMES, "detector": self}
        payload = pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)
        if key is None:
            return CHECKPOINT_MAGIC + UNSIGNED + payload
        return CHECKPOINT_MAGIC + SIGNED + _sign(key, payload) + payload

    def save(self, path: str | os.PathLike[str], key: bytes | None = None) -> None:
        """Write a checkpoint atomically (temporary file, fsync, rename)."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomic(path, self.dumps(key), ".detector-")

    @classmethod
    def loads(cls, data: bytes, what: str, key: bytes | None = None) -> Detector:
        """The detector in checkpoint bytes; :class:`CheckpointRefused` if they do not pass
        the checks of the module doc (with ``key``, a valid signature is required)."""
        if not data.startswith(CHECKPOINT_MAGIC):
            raise CheckpointRefused(f"{what}: not a detector checkpoint of this version")
        flag, rest = data[len(CHECKPOINT_MAGIC):][:1], data[len(CHECKPOINT_MAGIC) + 1:]
        if flag == SIGNED:
            tag, payload = rest[:32], rest[32:]
            if key is not None and not hmac.compare_digest(tag, _sign(key, payload)):
                raise CheckpointRefused(f"{what}: its signature does not match this "
                                        "repository's key (replaced or damaged)")
        elif flag == UNSIGNED:
            if key is not None:
                raise CheckpointRefused(f"{what}: not signed with this repository's key")
            payload = rest
        else:
            raise CheckpointRefused(f"{what}: not a detector checkpoint of this version")
        try:
            doc = _CheckpointUnpickler(io.BytesIO(payload)).load()
        except Exception as exc:  # unpickling can raise anything, in several lines
            reason = " ".join(str(exc).split())
            raise CheckpointRefused(f"{what}: not a detector checkpoint ({reason})") from None
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointRefused(f"{what}: unknown detector checkpoint format")
        if tuple(doc.get("features", ())) != FEATURE_NAMES:
            raise CheckpointRefused(f"{what}: made for other features")
        det = doc.get("detector")
        if not isinstance(det, Detector):
            raise CheckpointRefused(f"{what}: holds no detector")
        return det

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: bytes | None = None) -> Detector:
        with open(path, "rb") as f:
            return cls.loads(f.read(), os.fspath(path), key)

    @classmethod
    def prior(cls) -> Detector:
        """The detector shipped in the package, trained on simulated normal work."""
        resource = importlib.resources.files("corestate.models").joinpath(PRIOR_RESOURCE)
        try:
            data = resource.read_bytes()
        except FileNotFoundError:
            raise PermanentError("the shipped detector prior (corestate/models/prior.pkl) is "
                                 "missing; re-create it with `python benchmarks/train_prior.py`"
                                 ) from None
        return cls.loads(data, "corestate/models/prior.pkl")

    @classmethod
    def load_or_prior(cls, path: str | os.PathLike[str] | None,
                      key: bytes | None = None) -> Detector:
        """The checkpoint at ``path`` if there is one that passes the checks, else the
        shipped prior; a refused checkpoint is set aside as ``path.refused``."""
        if path is None or not os.path.exists(path):
            return cls.prior()
        try:
            return cls.load(path, key)
        except CheckpointRefused as exc:
            aside = os.fspath(path) + ".refused"
            try:
                os.replace(path, aside)
            except OSError:
                aside = "left in place"
            log.warning("detector checkpoint refused: %s; starting again from the shipped "
                        "prior (the refused file: %s)", exc, aside)
            return cls.prior()


def _sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    pos = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[pos]
