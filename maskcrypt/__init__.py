"""maskcrypt: find binary occlusion masks that encrypt images for recognition, and serve recognition behind them.

The method is described in docs/method.md; the layers, data flow and conventions in docs/architecture.md.
Pure logic (masks, data, selection) lives in plain modules; Ray stays at the edges.
"""

from maskcrypt.core.errors import MaskcryptError

__all__ = ["MaskcryptError", "__version__"]
__version__ = "0.1.0"
