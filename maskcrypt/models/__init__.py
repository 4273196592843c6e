"""The three models: recognizers O and E (:class:`Recognizer`), inpainter R (:class:`Inpainter`).

``Recognizer.from_checkpoint(path)`` and ``Inpainter.from_checkpoint(path)`` are how
every later stage (evaluation, serving) loads them.
"""

from maskcrypt.models.inpainter import Inpainter, InpainterConfig
from maskcrypt.models.recognizer import Recognizer, RecognizerConfig

__all__ = ["Inpainter", "InpainterConfig", "Recognizer", "RecognizerConfig"]
