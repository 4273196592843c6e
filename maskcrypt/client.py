"""The HTTP client of the recognition service, at its short import path: ``from maskcrypt.client import Client``.

It lives in :mod:`maskcrypt.serving.client`; this module only re-exports it.
"""

from maskcrypt.serving.client import NETWORK_ERRORS, RETRY_STATUS, Client, RetryPolicy, retryable

__all__ = ["NETWORK_ERRORS", "RETRY_STATUS", "Client", "RetryPolicy", "retryable"]
