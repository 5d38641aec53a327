"""``python -m traft.cli``: the ``traft`` command line."""

from . import main

main()
