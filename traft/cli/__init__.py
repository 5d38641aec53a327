"""The ``traft`` command line: ``traft node``, ``traft local``, the key-value
commands (``put``, ``get``, ``delete``, ``cas``, ``keys``), ``status`` and
the admin commands. ``main`` is the console script's entry point.

Every expected failure (a :class:`traft.RaftError`, ``OSError``, a timeout,
a bad argument) is printed as one line, ``error: ...``, on stderr, with exit
code 1 (2 for a usage error); ``--verbose`` adds the traceback.
"""

from ._main import main as main

__all__ = ["main"]
