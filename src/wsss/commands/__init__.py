"""The command-line commands, one module each (``add_arguments``, ``run``), routed by :mod:`wsss.cli`."""
