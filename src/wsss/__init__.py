"""wsss: weakly supervised semantic and instance segmentation.

Image-level labels or boxes in, pixel masks and a trained segmentation network out.

The Python API for one image (:mod:`wsss.api`): ``wsss.cam_maps(image, checkpoint)`` and
``wsss.overlay(image, maps)``; they are imported on first use, so ``import wsss`` stays light.
"""

__version__ = "0.1.0"

from wsss.errors import WsssError  # noqa: E402

__all__ = ["ImageMaps", "WsssError", "__version__", "cam_maps", "overlay"]

_API = ("ImageMaps", "cam_maps", "overlay")


def __getattr__(name: str):
    if name in _API:
        from wsss import api

        return getattr(api, name)
    raise AttributeError(f"module 'wsss' has no attribute {name!r}")
