"""Restore: a snapshot's tree back into a directory, as ``restic restore`` does.

- :mod:`.restorer`: the walk, directories, special files, hardlinks, metadata, what
  to do with entries already in the target (:class:`Overwrite`, ``delete``);
- :mod:`.writer`: file content, written pack by pack on every core;
- :mod:`.include`: restic's ``--include`` patterns over snapshot paths.
"""

from corestate.restore.include import IncludeFilter
from corestate.restore.restorer import Overwrite, RestoreResult, restore

__all__ = ["IncludeFilter", "Overwrite", "RestoreResult", "restore"]
