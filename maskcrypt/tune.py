"""Threshold search on Ray Tune over a finished determination's tables (selection split only).

The source's thresholds (t_gap 30 points, t_drop 7, t_enc 80%, t_orig 50%, k 2-3) are
examples. Which values suit a deployment depends on how much an outsider may still
recognize. This module answers that from the tables a select run already wrote, with no
model run: Table 1 (``results/table1.parquet``) and the attack list's Table 2
(``results/table2.parquet``), both on the selection split.

**Objective** (docs/tuning.md): a trial's thresholds choose
target masks exactly as :func:`maskcrypt.determine.stage.determine` would (target buckets by
t_gap, candidates = top k of each, targets = candidates with drop > t_drop passing the
basic form t_enc/t_orig). The choice is *feasible* when every chosen mask keeps O's
accuracy on masked images <= ``o_masked``, O's accuracy on inpainted images <=
``o_inpainted`` and its inpainting drop >= ``min_drop`` (and, with ``max_attacker``, its
worst attacker's accuracy, ``results/attacks.parquet``, <= that; with ``max_linkage``, the
outsider's linkage Recall@1, ``results/linkage.parquet``, <= that); every chosen mask counts
because ``mask=random`` or an explicit id can serve any of them. A feasible trial scores
its *utility*: E's mean accuracy over the chosen masks (``utility="best"``: the best
mask's, what ``mask=best`` serves). An infeasible trial scores ``-1 - violation`` (the
summed excess over the budget and the floor), an empty choice ``-3``: every feasible
trial outranks every infeasible one, and less infeasible ones rank higher.

The tuned choice's figures on the held-out confirmation split
(``results/table2_confirmation.parquet``) are reported beside the selection figures:
picking the best of many trials on one split flatters it, the other split does not.

The pure parts (:func:`choose`, :func:`assess`, :func:`pareto_front`,
:func:`search_space`) are tested without Ray; :func:`search` is the Ray edge.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskcrypt.config import Budget
from maskcrypt.core.errors import MaskcryptError
from maskcrypt.core.fileio import save_figure, write_json, write_parquet
from maskcrypt.core.rundir import Run
from maskcrypt.runtime.cluster import require_ray
from maskcrypt.selection.rules import Thresholds, decide

INFEASIBLE = -1.0
EMPTY = -3.0


@dataclass
class Tables:
    """What a select run wrote that the search needs."""

    table1: pd.DataFrame
    table2: pd.DataFrame  # selection split, the attack list
    confirmation: pd.DataFrame | None  # the same masks on the held-out split
    thresholds: Thresholds  # the run's own

    @classmethod
    def load(cls, run: str | os.PathLike[str]) -> Tables:
        root = Path(run)
        meta_path = root / "targets.json"
        if not meta_path.exists():
            raise MaskcryptError(f"run {root}: no targets.json (run jobs/select.py first)")
        meta = json.loads(meta_path.read_text())
        res = root / "results"
        for name in ("table1", "table2"):
            if not (res / f"{name}.parquet").exists():
                why = (meta.get("reason") or {}).get("message", "")
                raise MaskcryptError(f"run {root}: no results/{name}.parquet"
                                     + (f" (the determination stopped early: {why})" if why else "")
                                     + "; the search needs Table 1 and the attack's Table 2")
        t2 = pd.read_parquet(res / "table2.parquet")
        if t2.empty:
            raise MaskcryptError(f"run {root}: results/table2.parquet lists no attacked mask")
        conf = res / "table2_confirmation.parquet"
        return cls(pd.read_parquet(res / "table1.parquet"), t2, pd.read_parquet(conf) if conf.exists() else None,
                   Thresholds(**meta["thresholds"]))


def choose(t1: pd.DataFrame, t2: pd.DataFrame, th: Thresholds) -> pd.DataFrame:
    """The target masks ``th`` picks from the tables: the determination's own decision, :func:`decide`."""
    return decide(t1, t2, th).targets


def assess(chosen: pd.DataFrame, budget: Budget) -> dict[str, Any]:
    """Utility, leaks, feasibility and the score of one choice (see the module docstring)."""
    if chosen.empty:
        return {"targets": 0, "mask_ids": "", "utility": 0.0, "best_E": 0.0, "mean_E": 0.0,
                "leak_masked": float("nan"), "leak_inpainted": float("nan"), "leak_attacker": float("nan"),
                "leak_linkage": float("nan"),
                "min_drop": float("nan"), "feasible": False, "violation": float("nan"), "score": EMPTY}
    needed = (["O_masked", "O_inpainted"] + (["worst_accuracy"] if budget.max_attacker is not None else [])
              + (["worst_linkage"] if budget.max_linkage is not None else []))
    for col in needed:
        if col not in chosen.columns:
            raise MaskcryptError(f"table2 has no {col} column: rerun the determination with this version")
    mean_e, best_e = float(chosen["fourth"].mean()), float(chosen["fourth"].max())
    leak_m, leak_i = float(chosen["O_masked"].max()), float(chosen["O_inpainted"].max())
    leak_a = float(chosen["worst_accuracy"].max()) if "worst_accuracy" in chosen.columns else float("nan")
    # A chosen mask without a linkage figure (linkage off or skipped) counts as fully linked under --max-linkage.
    leak_l = float(chosen["worst_linkage"].fillna(1.0).max()) if "worst_linkage" in chosen.columns else float("nan")
    drop = float(chosen["drop"].min())
    violation = (max(0.0, leak_m - budget.o_masked) + max(0.0, leak_i - budget.o_inpainted)
                 + max(0.0, budget.min_drop - drop))
    if budget.max_attacker is not None:  # the worst attacker of every chosen mask (results/attacks.parquet)
        violation += max(0.0, leak_a - budget.max_attacker)
    if budget.max_linkage is not None:  # the outsider's linkage of every chosen mask (results/linkage.parquet)
        violation += max(0.0, leak_l - budget.max_linkage)
    utility = best_e if budget.utility == "best" else mean_e
    feasible = violation == 0.0
    return {"targets": len(chosen), "mask_ids": ",".join(chosen["mask_id"]), "utility": utility, "best_E": best_e,
            "mean_E": mean_e, "leak_masked": leak_m, "leak_inpainted": leak_i, "leak_attacker": leak_a,
            "leak_linkage": leak_l,
            "min_drop": drop, "feasible": feasible, "violation": violation,
            "score": utility if feasible else INFEASIBLE - violation}


def t_gap_floor(t1: pd.DataFrame, t2: pd.DataFrame) -> float:
    """The lowest t_gap that keeps every unattacked bucket out of the target buckets.

    The attack measured only the run's target buckets; a looser t_gap would make other
    buckets targets whose masks were never attacked, a choice the tables cannot judge.
    """
    real = t1[t1["bucket"] > 0]
    unattacked = real[~real["bucket"].isin(t2["bucket"].unique())]
    return float(np.clip(unattacked["gap"].max(), 0.0, 1.0)) if len(unattacked) else 0.0


def search_space(tables: Tables, mode: str = "random", grid_points: int = 4) -> dict[str, Any]:
    """Tune's ``param_space``: each threshold over the range where it changes a decision."""
    from ray import tune

    t1, t2 = tables.table1, tables.table2
    lo_gap = t_gap_floor(t1, t2)
    hi_gap = float(np.clip(t1.loc[t1["bucket"] > 0, "gap"].max(), lo_gap, 1.0))
    o_masked = t2["O_masked"] if "O_masked" in t2.columns else pd.Series([0.0, 1.0])
    ranges = {
        "t_gap": (lo_gap, hi_gap),
        "t_enc": (float(np.clip(t2["fourth"].min() - 0.01, 0, 1)), float(t2["fourth"].max())),
        "t_orig": (float(o_masked.min()), float(np.clip(o_masked.max() + 0.01, 0, 1))),
        "t_drop": (0.0, float(np.clip(t2["drop"].max(), 0, 1))),
    }
    k_values = list(range(2, tables.thresholds.attack_top + 1))
    if mode == "grid":
        space: dict[str, Any] = {
            k: tune.grid_search(sorted({round(float(v), 6) for v in np.linspace(a, b, grid_points)}))
            for k, (a, b) in ranges.items()}
        space["top_k"] = tune.grid_search(k_values)
        return space
    if mode != "random":
        raise MaskcryptError(f"search mode {mode!r}: expected random or grid")
    space = {k: tune.uniform(a, b) if b > a else a for k, (a, b) in ranges.items()}
    space["top_k"] = tune.choice(k_values)
    return space


def thresholds_of(config: dict[str, Any], base: Thresholds) -> Thresholds:
    """A trial's config as :class:`Thresholds` (the run's attack_top and confidence kept)."""
    return replace(base, **{k: (int(v) if k == "top_k" else float(v)) for k, v in config.items()
                            if k in ("t_gap", "t_enc", "t_orig", "t_drop", "top_k")})


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Distinct choices no other choice beats on both utility (higher) and leak (lower).

    ``points``: rows with ``mask_ids``, ``utility`` and ``leak`` (the larger of the two
    leaks); empty choices are left out.
    """
    pts = points[points["targets"] > 0].drop_duplicates("mask_ids").sort_values(["leak", "utility"],
                                                                                 ascending=[True, False])
    front, best = [], -np.inf
    for row in pts.itertuples():
        if row.utility > best:
            front.append(row.Index)
            best = row.utility
    return pts.loc[front].reset_index(drop=True)


def _trial(config: dict[str, Any], table1: pd.DataFrame, table2: pd.DataFrame, base: Thresholds,
           budget: Budget) -> None:
    """One Tune trial: the choice ``config`` makes and its assessment, reported once."""
    from ray import tune

    th = thresholds_of(config, base)
    tune.report(assess(choose(table1, table2, th), budget))


def plot_pareto(trials: pd.DataFrame, front: pd.DataFrame, budget: Budget, path: Path) -> Path:
    """Utility against leak for every trial's choice, the front joined, the budget drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = trials[trials["targets"] > 0]
    ok = pts["feasible"].astype(bool)
    ax.scatter(100 * pts.loc[~ok, "leak"], 100 * pts.loc[~ok, "utility"], c="0.7", s=14, label="over budget")
    ax.scatter(100 * pts.loc[ok, "leak"], 100 * pts.loc[ok, "utility"], c="tab:blue", s=14, label="feasible")
    if len(front):
        ax.plot(100 * front["leak"], 100 * front["utility"], "-o", c="tab:red", ms=4, label="Pareto front")
    caps = [b for b in (budget.o_masked, budget.o_inpainted, budget.max_attacker, budget.max_linkage)
            if b is not None]
    ax.axvline(100 * min(caps), ls="--", c="k", lw=1, label="privacy budget")
    ax.set_xlabel("O's accuracy, worst chosen mask, masked or inpainted (%)"
                  if budget.max_attacker is None and budget.max_linkage is None
                  else "worst chosen mask: O masked or inpainted, the worst attacker or linkage (%)")
    ax.set_ylabel(f"E's accuracy, {budget.utility} of chosen masks (%)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _confirmation(tables: Tables, ids: list[str], budget: Budget) -> dict[str, Any] | None:
    if tables.confirmation is None or not ids:
        return None
    conf = tables.confirmation.set_index("mask_id").loc[ids].reset_index()
    cols = [c for c in ("mask_id", "bucket", "n", "fourth", "fourth_lo", "fourth_hi", "fifth", "drop", "drop_lo",
                        "drop_hi", "O_masked", "O_inpainted", "worst_attacker", "worst_accuracy", "worst_linkage")
            if c in conf.columns]
    return {**assess(conf, budget), "masks": conf[cols].to_dict("records")}


def search(run: str | os.PathLike[str] | Run, budget: Budget = Budget(), mode: str = "random", samples: int = 64,
           grid_points: int = 4, seed: int = 0, trial_cpus: float = 0.25,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the search, write ``RUN/tune/`` and return the summary (``tune.json``).

    Outputs: ``best_thresholds.json`` (a ``--thresholds`` file for jobs/select.py, written
    last), ``trials.parquet``, ``pareto.parquet`` + ``pareto.png``, ``tune.json``.
    """
    from ray import tune

    root = Run.open(run).root
    tables = Tables.load(root)
    out = root / "tune"
    out.mkdir(parents=True, exist_ok=True)
    (out / "best_thresholds.json").unlink(missing_ok=True)  # a stale one must not look like this search's
    space = search_space(tables, mode, grid_points)
    started = time.perf_counter()
    require_ray("threshold search")
    storage = out / "ray"
    shutil.rmtree(storage / "search", ignore_errors=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, table1=tables.table1, table2=tables.table2, base=tables.thresholds,
                             budget=budget), {"cpu": trial_cpus})
    search_alg = tune.search.BasicVariantGenerator(random_state=seed) if mode == "random" else None
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=samples if mode == "random" else 1,
                                    search_alg=search_alg),
        run_config=tune.RunConfig(name="search", storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise MaskcryptError(f"threshold search: {len(errors)} trial(s) failed, first: {errors[0]}")
    keys = ["t_gap", "t_enc", "t_orig", "t_drop", "top_k"]
    trials = pd.DataFrame([{**{k: r.config[k] for k in keys}, **r.metrics} for r in grid])
    trials = trials[[*keys, *assess(pd.DataFrame(), budget).keys()]]
    leaks = (["leak_masked", "leak_inpainted"] + (["leak_attacker"] if budget.max_attacker is not None else [])
             + (["leak_linkage"] if budget.max_linkage is not None else []))
    trials["leak"] = trials[leaks].max(axis=1)
    trials = trials.sort_values(["score", "targets", "t_gap", "t_drop"], ascending=[False, False, True, True],
                                kind="stable").reset_index(drop=True)
    seconds = time.perf_counter() - started
    front = pareto_front(trials)
    best = trials.iloc[0]
    th = thresholds_of(best.to_dict(), tables.thresholds)
    chosen = choose(tables.table1, tables.table2, th)
    ids = chosen["mask_id"].tolist()
    summary: dict[str, Any] = {
        "run": str(root), "budget": asdict(budget), "mode": mode, "trials": len(trials), "seed": seed,
        "seconds": round(seconds, 1), "feasible_trials": int(trials["feasible"].sum()),
        "t_gap_floor": t_gap_floor(tables.table1, tables.table2),
        "run_thresholds": tables.thresholds.to_dict(), "best_thresholds": th.to_dict(),
        "selection": {**assess(chosen, budget), "masks": chosen[[c for c in ("mask_id", "bucket", "n", "fourth",
                      "fifth", "drop", "O_masked", "O_inpainted", "worst_attacker", "worst_accuracy",
                      "worst_linkage")
                      if c in chosen.columns]].to_dict("records")},
        "confirmation": _confirmation(tables, ids, budget),
        "run_choice": assess(choose(tables.table1, tables.table2, tables.thresholds), budget),
    }
    if not best["feasible"]:
        summary["note"] = ("no trial met the budget: best_thresholds.json holds the least infeasible choice; "
                           "loosen the budget or measure more masks")
    write_parquet(trials, out / "trials.parquet")
    write_parquet(front, out / "pareto.parquet")
    plot_pareto(trials, front, budget, out / "pareto.png")
    write_json(out / "tune.json", summary, indent=2)
    write_json(out / "best_thresholds.json", th.to_dict(), indent=2)
    sel = summary["selection"]
    log(f"tune: {len(trials)} trials in {seconds:.1f}s, {summary['feasible_trials']} feasible; best: "
        f"{sel['targets']} target(s), E {100 * sel['utility']:.1f}% ({budget.utility}), O leak "
        f"{100 * np.nan_to_num(max(sel['leak_masked'], sel['leak_inpainted'])):.1f}%")
    if summary["confirmation"]:
        c = summary["confirmation"]
        log(f"tune: on the confirmation split: E {100 * c['utility']:.1f}%, O leak "
            f"{100 * max(c['leak_masked'], c['leak_inpainted']):.1f}%, feasible {c['feasible']}")
    log(f"tune: wrote {out / 'best_thresholds.json'} (use: jobs/select.py --thresholds it)")
    return summary
