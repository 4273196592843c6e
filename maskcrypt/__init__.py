"""maskcrypt: find binary occlusion masks that encrypt images for recognition, and serve recognition behind them.

The method is specified in METHOD.md; the layout and conventions in DESIGN.md.
Pure logic (masks, data, selection) lives in plain modules; Ray stays at the edges.
"""

from maskcrypt.core.errors import MaskcryptError

__all__ = ["MaskcryptError", "__version__"]
__version__ = "0.1.0"
