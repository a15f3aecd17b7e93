"""``python -m corestate`` is the ``corestate`` command."""

from corestate.cli.main import main

main()
