"""The stores: one module per kind of file that stages pass on, the only code reading and writing it.

- :mod:`wsss.stores.maps`: localization maps, ``<dir>/<id>.npz`` (:class:`MapStore`);
- :mod:`wsss.stores.edges`: IRN boundary maps, ``<dir>/<id>.npz`` (:class:`EdgeStore`);
- :mod:`wsss.stores.masks`: label maps, ``<dir>/<id>.png`` (:class:`MaskStore`);
- :mod:`wsss.stores.instances`: instances with ignore regions, one COCO JSON (:class:`InstanceStore`).

Every read error is a :class:`~wsss.errors.DataError` naming the file; every write is atomic
(:mod:`wsss.io`). The package sits below everything but ``wsss.io``, ``wsss.errors``,
``wsss.config`` and ``wsss.runtime``: it imports no dataset, model, trainer, method or pipeline.
"""

from wsss.stores.edges import EdgeStore
from wsss.stores.instances import ImageInstances, InstanceSet, InstanceStore
from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.stores.masks import MaskStore

__all__ = [
    "EdgeStore",
    "ImageInstances",
    "InstanceSet",
    "InstanceStore",
    "LocalizationMaps",
    "MapStore",
    "MaskStore",
]
