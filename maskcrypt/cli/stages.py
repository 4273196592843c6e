"""``maskcrypt run|prepare|train|determine`` and ``maskcrypt tune``: the method's stages over one run."""

from __future__ import annotations

import argparse
from typing import Any

#: Subcommands over the pipeline: (first stage, last stage or None = --until, help).
STAGE_COMMANDS = {
    "run": ("prepare", None, "the whole method: prepare -> train -> determine (-> tune with --until tune)"),
    "prepare": ("prepare", "prepare", "build the run's mask libraries and pictures"),
    "train": ("prepare", "train", "prepare if needed, then train O, E and R on Ray Train into RUN/models/"),
    "determine": ("determine", "determine", "determine the target masks of a trained run (Ray Data)"),
}


def cmd_stages(args: argparse.Namespace) -> int:
    """``run``/``prepare``/``train``/``determine``: a RunConfig from --config and flags, then the pipeline."""
    from maskcrypt.cli.flags import RUN_FLAGS, build_config
    from maskcrypt.pipeline import run_pipeline
    from maskcrypt.runtime.cluster import init_ray

    start, until, _ = STAGE_COMMANDS[args.command]
    config = build_config(args, RUN_FLAGS, {"until": until} if until else None)
    if config.until != "prepare":
        init_ray()
    out = run_pipeline(config, start=start, restart=args.restart, retrain=args.retrain,
                       redetermine=args.redetermine, log=print)
    if "determine" in out and config.determine.require_targets and not out["determine"]["targets"]:
        return 3
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """The threshold search over a determined run's tables (Ray Tune)."""
    from maskcrypt.cli.flags import TUNE_FLAGS, build_config
    from maskcrypt.core.rundir import Run
    from maskcrypt.pipeline import resolve, tune_stage
    from maskcrypt.runtime.cluster import init_ray

    config = resolve(build_config(args, TUNE_FLAGS))
    init_ray()
    summary = tune_stage(config, Run.open(config.run), log=print)
    print(f"best thresholds: {summary['best_thresholds']}")
    if "note" in summary:
        print(summary["note"])
    return 0


def add_parser(sub: Any) -> None:
    """The ``stages`` command(s) on the top-level subparsers."""
    from maskcrypt.cli.flags import RUN_FLAGS, TUNE_FLAGS, add_flags, add_set

    for name, (_, until, text) in STAGE_COMMANDS.items():
        st = sub.add_parser(name, help=text, description=text)
        st.add_argument("--config", default="", help="YAML run configuration (RunConfig keys); flags override it")
        add_set(st)
        add_flags(st, [f for f in RUN_FLAGS if not (until and f[1] == ("until",))])
        act = st.add_argument_group("actions")
        act.add_argument("--restart", action="store_true", help="rebuild a run prepared with other settings")
        act.add_argument("--retrain", action="store_true", help="retrain models trained with other settings")
        act.add_argument("--redetermine", action="store_true",
                         help="discard per-mask results computed with other inputs instead of refusing")
        st.set_defaults(func=cmd_stages, command=name)
    tu = sub.add_parser("tune", help="search the selection thresholds on Ray Tune over a determined run's tables")
    tu.add_argument("--config", default="", help="YAML run configuration (its tune: section)")
    add_set(tu)
    add_flags(tu, TUNE_FLAGS, "search")
    tu.set_defaults(func=cmd_tune)
