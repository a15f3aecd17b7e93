"""``python -m corestate`` is the ``corestate`` command."""

from corestate.cli.main import main

if __name__ == "__main__":  # not when a worker process re-imports this module
    main()
