"""``python -m traft``: the ``traft`` command line (see ``traft --help``)."""

from .cli import main

main()
