"""Inpainting without any training: OpenCV's Telea and Navier-Stokes methods, an attacker's free tools.

``cv2.inpaint`` (``opencv-python-headless``) fills a hole from its boundary inwards:
*Telea* (2004) by a fast-marching weighted average of the known neighbourhood,
*Navier-Stokes* (Bertalmio et al. 2001) by propagating isophotes as a fluid. Neither
needs data or a model, so a mask that only an RFR-Net trained by the operator fails to
undo may still leak to a recognizer after a classical fill. OpenCV works per image on
the CPU; :func:`classical_inpaint` takes and returns the uint8 N x C x H x W tensors the
:class:`~maskcrypt.models.predictor.Predictor` passes around, on whatever device they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskcrypt.core.errors import MaskcryptError

#: Filler name -> OpenCV flag name.
METHODS = {"telea": "INPAINT_TELEA", "ns": "INPAINT_NS"}
#: Neighbourhood radius (pixels) each filled pixel draws from: OpenCV's documented example value.
RADIUS = 3


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise MaskcryptError("classical inpainting needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def inpaint_numpy(images: np.ndarray, masks: np.ndarray, method: str, radius: int = RADIUS) -> np.ndarray:
    """uint8 N x C x H x W images (C = 1 or 3) and 0/1 masks (H x W or N x H x W, 0 = hole) -> filled images.

    Known pixels are kept exactly (``cv2.inpaint`` only writes the hole).
    """
    if method not in METHODS:
        raise MaskcryptError(f"classical inpainting: expected one of {', '.join(METHODS)}, got {method!r}")
    cv2 = _cv2()
    flag = getattr(cv2, METHODS[method])
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.dtype != np.uint8:
        raise MaskcryptError(f"classical inpainting: expected uint8 N x C x H x W with C in (1, 3), got "
                             f"{x.dtype} {x.shape}")
    m = np.asarray(masks)
    holes = np.broadcast_to(m, (x.shape[0], *x.shape[2:])) if m.ndim == 2 else m
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        hole = np.ascontiguousarray((holes[i] == 0).astype(np.uint8) * 255)
        img = np.ascontiguousarray(x[i].transpose(1, 2, 0))
        if x.shape[1] == 1:
            out[i, 0] = cv2.inpaint(img[..., 0].copy(), hole, radius, flag)
        else:
            out[i] = cv2.inpaint(img, hole, radius, flag).transpose(2, 0, 1)
    return out


def classical_inpaint(images: Any, masks: Any, method: str, radius: int = RADIUS) -> Any:
    """:func:`inpaint_numpy` on torch tensors: computed on the CPU, returned on the images' device."""
    import torch

    filled = inpaint_numpy(images.detach().cpu().contiguous().numpy(), masks.detach().cpu().numpy(), method,
                           radius)
    return torch.from_numpy(filled).to(images.device)
