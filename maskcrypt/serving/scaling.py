"""How many replicas the service runs: a fixed count, or Serve's autoscaling between MIN and MAX.

The command line (``maskcrypt serve --replicas N`` or ``--autoscale MIN,MAX``) and the load
benchmark turn their flags into :func:`~maskcrypt.serving.deployment.build_app`'s
``num_replicas`` or ``autoscaling_config`` here, so a bad value is refused with the flag's
name before Ray starts, and both deploy the same configuration.
"""

from __future__ import annotations

from typing import Any

from maskcrypt.core.errors import MaskcryptError

#: Requests in flight per replica that Serve's autoscaler aims for: serve/config.yaml's value (Serve's own is 2,
#: too low for replicas that batch up to 16 images per forward).
DEFAULT_TARGET_ONGOING_REQUESTS = 8.0

_EXPECTED = "expected MIN,MAX replicas: integers with 0 <= MIN <= MAX and MAX >= 1 (e.g. 1,4)"


def autoscaling_config(spec: str, target_ongoing_requests: float = DEFAULT_TARGET_ONGOING_REQUESTS) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` from ``--autoscale MIN,MAX`` and ``--target-ongoing-requests``.

    MIN 0 is allowed (scale to zero when idle): the first request after that waits
    while a replica starts and loads E, the targets and the gallery.
    """
    parts = [p.strip() for p in spec.split(",")]
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise MaskcryptError(f"--autoscale {spec!r}: {_EXPECTED}") from None
    if low < 0 or high < 1 or low > high:
        raise MaskcryptError(f"--autoscale {spec!r}: {_EXPECTED}; got MIN {low}, MAX {high}")
    if not target_ongoing_requests > 0:  # also refuses NaN
        raise MaskcryptError(f"--target-ongoing-requests {target_ongoing_requests:g}: expected a number above 0 "
                             "(requests in flight per replica that the autoscaler aims for)")
    return {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target_ongoing_requests}


def replica_options(replicas: int | None, autoscale: str | None,
                    target_ongoing_requests: float | None) -> dict[str, Any]:
    """``build_app``'s replica keyword from the serve command's flags; ``None`` means the flag was not given.

    A fixed count and autoscaling exclude each other, and a target without
    ``--autoscale`` would be silently ignored: both are refused rather than guessed.
    """
    if autoscale is None:
        if target_ongoing_requests is not None:
            raise MaskcryptError("--target-ongoing-requests applies to autoscaling only: give --autoscale MIN,MAX "
                                 "with it")
        count = 1 if replicas is None else replicas
        if count < 1:
            raise MaskcryptError(f"--replicas {count}: expected a replica count of at least 1 (or --autoscale 0,MAX "
                                 "to scale to zero when idle)")
        return {"num_replicas": count}
    if replicas is not None:
        raise MaskcryptError(f"--replicas {replicas} with --autoscale {autoscale}: give one or the other (a fixed "
                             "count, or autoscaling between MIN and MAX)")
    target = DEFAULT_TARGET_ONGOING_REQUESTS if target_ongoing_requests is None else target_ongoing_requests
    return {"autoscaling_config": autoscaling_config(autoscale, target)}


def replicas_at_start(num_replicas: int | str, autoscaling: dict[str, Any] | None) -> int:
    """Replicas that must run as soon as the app is deployed: what the GPU check before deployment covers.

    A fixed count starts every replica; autoscaling starts ``min_replicas``, and at least
    one, since with MIN 0 the first request starts one. Serve's ``"auto"`` count counts as one.
    """
    if autoscaling:
        return max(1, int(autoscaling.get("min_replicas", 1)))
    return num_replicas if isinstance(num_replicas, int) and num_replicas > 0 else 1
