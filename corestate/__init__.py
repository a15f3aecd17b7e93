"""CoreState: continuous data protection that writes restic-compatible repositories.

The package is layered; imports point one way::

    schemas -> kernel -> repository -> pipeline -> agents, connectors, maintenance -> cli

See ``docs/design.md`` for the format and the stages as built.
"""

__version__ = "0.1.0"
