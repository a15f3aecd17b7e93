"""Online models on the change stream (River): anomaly scoring, change-rate forecast,
tiering advice.

- :mod:`.magic`: file types from leading bytes, and what a suffix promises.
- :mod:`.sketch`: a cheap look at a file's content (entropy, compression ratio, block
  hashes, MinHash) and a bounded memory of each file's previous version.
- :mod:`.features`: window features of one host's change stream: the model's input.
- :mod:`.detector`: the anomaly detector, its calibrated threshold, reasons, checkpoints
  and the prior shipped as ``prior.pkl``.
- :mod:`.forecast`: change-rate forecast and the capture cadence it proposes.
- :mod:`.tiering`: storage-class advice with estimated monthly savings.

Nothing here imports the agents or the CLI; :mod:`corestate.agents.sentinel` wires the
detector into ``corestate protect`` and ``corestate agent``, and records alerts in the
repository's ledger (:mod:`corestate.repository.alerts`).
"""
