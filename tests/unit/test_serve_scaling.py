"""``maskcrypt serve``'s replica flags: --replicas, --autoscale MIN,MAX, --target-ongoing-requests (no Ray started)."""

from __future__ import annotations

import math

import pytest

from maskcrypt.cli.main import build_parser, main
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.serving.scaling import (
    DEFAULT_TARGET_ONGOING_REQUESTS,
    autoscaling_config,
    replica_options,
    replicas_at_start,
)


def test_autoscale_values_become_a_serve_autoscaling_config():
    from ray.serve.config import AutoscalingConfig

    assert autoscaling_config("1,2") == {"min_replicas": 1, "max_replicas": 2,
                                         "target_ongoing_requests": DEFAULT_TARGET_ONGOING_REQUESTS}
    assert autoscaling_config(" 0 , 3", 2.5) == {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": 2.5}
    for spec in ("1,1", "0,1", "2,8"):
        AutoscalingConfig(**autoscaling_config(spec))  # Serve accepts each, scale-to-zero included


@pytest.mark.parametrize("spec", ["", "1", "1,2,3", "a,2", "1.5,2", "1,", "-1,2", "3,2", "0,0"])
def test_bad_autoscale_values_name_the_flag_and_what_was_expected(spec):
    with pytest.raises(MaskcryptError, match=r"--autoscale .*expected MIN,MAX replicas: integers with 0 <= MIN"):
        autoscaling_config(spec)


@pytest.mark.parametrize("target", [0.0, -1.0, math.nan])
def test_a_target_of_zero_or_less_or_nan_is_refused(target):
    with pytest.raises(MaskcryptError, match=r"--target-ongoing-requests .*expected a number above 0"):
        autoscaling_config("1,2", target)


def test_replica_options_choose_a_fixed_count_or_autoscaling_never_both():
    assert replica_options(None, None, None) == {"num_replicas": 1}
    assert replica_options(3, None, None) == {"num_replicas": 3}
    assert replica_options(None, "1,4", None) == {"autoscaling_config": autoscaling_config("1,4")}
    assert replica_options(None, "1,4", 16.0)["autoscaling_config"]["target_ongoing_requests"] == 16.0
    with pytest.raises(MaskcryptError, match="--replicas 1 with --autoscale 1,4: give one or the other"):
        replica_options(1, "1,4", None)  # even the default count, given explicitly
    with pytest.raises(MaskcryptError, match="--target-ongoing-requests applies to autoscaling only"):
        replica_options(2, None, 4.0)
    with pytest.raises(MaskcryptError, match="--replicas 0: expected a replica count of at least 1"):
        replica_options(0, None, None)


def test_serve_help_shows_the_flags_and_a_bad_value_is_refused_before_ray(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--autoscale MIN,MAX" in shown and "--target-ongoing-requests N" in shown and "--replicas" in shown
    args = build_parser().parse_args(["serve", "r", "--autoscale", "1,2", "--target-ongoing-requests", "4"])
    assert (args.autoscale, args.target_ongoing_requests, args.replicas) == ("1,2", 4.0, None)
    # Refused by the command itself, before Ray starts: one error line, no traceback.
    assert main(["serve", "no/such/run", "--autoscale", "2,1"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --autoscale '2,1': expected MIN,MAX replicas: integers with "
                                               "0 <= MIN <= MAX and MAX >= 1 (e.g. 1,4); got MIN 2, MAX 1")
    assert main(["serve", "no/such/run", "--replicas", "2", "--autoscale", "1,2"]) == 2
    assert "give one or the other" in capsys.readouterr().err


def test_the_gpu_check_before_deployment_covers_the_replicas_that_start_at_once():
    """A fixed count starts all its replicas, autoscaling its MIN (one at least): what must fit in the GPUs now."""
    assert replicas_at_start(3, None) == 3 and replicas_at_start("auto", None) == 1
    assert replicas_at_start(1, autoscaling_config("2,4")) == 2
    assert replicas_at_start(1, autoscaling_config("0,4")) == 1  # the first request starts one
