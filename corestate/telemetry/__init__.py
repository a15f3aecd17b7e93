"""Telemetry: the metrics every CoreState process can export, and webhook notifications.

- :mod:`.instruments`: every metric's name, unit, labels and meaning (plain data);
- :mod:`.recorder`: what instrumented code calls (``metrics().backend_op(...)``); does
  nothing until a command is given a metrics option;
- :mod:`.otel`: the OpenTelemetry recorder behind the metrics options;
- :mod:`.exporters`: the ``/metrics`` listener, Pushgateway pushes, textfiles;
- :mod:`.rpo`: protect's pending changes and their recovery point;
- :mod:`.lag`: a consumer group's lag, read from the brokers;
- :mod:`.notify`: failures and alerts to a webhook.

Importing this package (or :mod:`.recorder`, :mod:`.instruments`, :mod:`.notify`) loads
no OpenTelemetry: a command without metrics options pays nothing for them.
"""

from __future__ import annotations

from corestate.telemetry.recorder import Recorder, install, metrics

__all__ = ["Recorder", "install", "metrics"]
