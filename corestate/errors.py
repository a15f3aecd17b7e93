"""The one error tree of CoreState.

Every error a user can see derives from :class:`CoreStateError` and carries a message a
person can act on plus the process exit code the CLI uses for it.

- :class:`RetryableError`: a transient failure (storage timeout, broker away); wrappers
  retry it with backoff.
- :class:`PermanentError`: retrying cannot help (wrong password, missing repository,
  bad arguments).
- :class:`IntegrityError`: stored data does not match what its id or MAC promises.
  Never retried; always reported with what is damaged.

Exit codes follow restic where restic has one: 1 fatal, 3 "snapshot created but some
source files could not be read".
"""

from __future__ import annotations


class CoreStateError(Exception):
    """Base of every CoreState error; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class RetryableError(CoreStateError):
    """A transient failure: the same call may succeed later."""


class PermanentError(CoreStateError):
    """Retrying cannot help; the user must change something."""


class IntegrityError(CoreStateError):
    """Stored data fails its hash or MAC; never retried."""


class NotFoundError(PermanentError):
    """A named object (file in the backend, snapshot, key) does not exist."""


class ImmutableError(PermanentError):
    """A stored file is under retention (S3 Object Lock) until ``until`` (seconds since
    the epoch) and cannot be removed before then."""

    def __init__(self, message: str, *, until: float) -> None:
        super().__init__(message)
        self.until = until


class WrongPasswordError(PermanentError):
    """No key file in the repository opens with the given password."""


class RepositoryLockedError(PermanentError):
    """Another process holds a conflicting lock on the repository."""


class IncompleteBackupError(CoreStateError):
    """The snapshot was saved but some source files could not be read (restic's exit 3)."""

    exit_code = 3
