"""The methods: one module each, registered by name (see :mod:`wsss.methods.base`).

Importing this package registers the built-in methods. Adding a method is one module with a
:class:`~wsss.methods.base.Method` subclass under ``@register``, plus its import below.
"""

from wsss.methods.base import (INSTANCE_ORACLE, Context, DataConfig, Method, RefineDefaults, RuntimeConfig, Stage,
                               Work, get_method, method_sections, quick_settings, register, registered_methods)

# Built-in methods, registered on import (order: the demo's and the recipe sections').
from wsss.methods import cam, advcam, rib, wood, bana, bbam  # noqa: E402,F401  isort: skip

__all__ = [
    "INSTANCE_ORACLE",
    "Context",
    "DataConfig",
    "Method",
    "RefineDefaults",
    "RuntimeConfig",
    "Stage",
    "Work",
    "get_method",
    "method_sections",
    "quick_settings",
    "register",
    "registered_methods",
]
