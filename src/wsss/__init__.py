"""wsss: weakly supervised semantic and instance segmentation.

Image-level labels or boxes in, pixel masks and a trained segmentation network out.
"""

__version__ = "0.1.0"

from wsss.errors import WsssError  # noqa: E402

__all__ = ["WsssError", "__version__"]
