"""Serving "mask, then recognize": request handling (:mod:`.requests`), the Ray Serve deployment
(:mod:`.deployment`), the identity gallery (:mod:`.gallery`) and the HTTP client (:mod:`.client`).

The request-side names are re-exported here (``from maskcrypt.serving import load_targets``);
the deployment is not, since importing it loads Ray Serve: ``from maskcrypt.serving.deployment
import build_app``.
"""

from maskcrypt.serving.client import Client, RetryPolicy
from maskcrypt.serving.requests import ServiceConfig, ServiceError, Targets, decode_upload, load_targets

__all__ = ["Client", "RetryPolicy", "ServiceConfig", "ServiceError", "Targets", "decode_upload", "load_targets"]
