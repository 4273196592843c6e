"""Adaptive per-mask ranking against full mode: forward passes spent and whether the top k agree.

    make run                                    # once: the trained default run this uses
    python benchmarks/adaptive.py --quick       # 600 masks, ~3 minutes
    python benchmarks/adaptive.py               # 2,000 masks

Both modes rank the same freshly generated masks (seed 7, the run's size, every
bucket) by E's accuracy on the run's test images (all of them in selection), E only
(the ranking needs only E). *Full*: every mask x every image. *Adaptive*:
``evaluate_adaptive`` keeping ``--keep`` per bucket, with error probability ``--delta``
and tolerance ``--tolerance``. Agreement, the race's promise: in every bucket, each mask
the race ranks in the top k (k = 3 and keep) has a full-mode accuracy within the
tolerance of full mode's k-th. Reported: forward passes and wall time of both, their
ratios, agreement, where the race's passes went (first round, boundary masks,
completing the winners) and the rounds. Full mode keeps every face's answer
(``hits_E``), so three figures come from the very answers the race saw:

* **the oracle** (:func:`maskcrypt.selection.race.oracle_passes`): what a race that knew
  each bucket's k-th accuracy would spend with exact bounds, the limit beside the
  reduction (``RESULT race_oracle_reduction``);
* **the replay**: the pure race (:func:`~maskcrypt.selection.race.simulate_race`) on full
  mode's answers in the race's reveal order, which must spend what the Ray race spent;
* **shared difficulty**: for pairs of masks of a bucket near its k-th, Var(X_i - X_j) /
  (Var X_i + Var X_j) over faces (1: they fail independent faces; near 0: the same
  faces), the figure that decides whether bounds on paired differences would pay.

``--full-cache`` keeps full mode's table (answers included), which
``benchmarks/race_simulation.py --rates`` can replay without models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]

from maskcrypt.config import AdaptivePlan  # noqa: E402  (after the path: a checkout without an install)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="600 masks instead of 2,000")
    p.add_argument("--masks", type=int, default=0)
    p.add_argument("--run", default=str(ROOT / "runs" / "default"), help="a trained run (make run)")
    p.add_argument("--keep", type=int, default=5, help="masks kept per bucket (the attack list size)")
    p.add_argument("--first", type=int, default=0, help="images in the first round (0: AdaptivePlan's auto)")
    p.add_argument("--delta", type=float, default=AdaptivePlan.delta, help="error probability of the race")
    p.add_argument("--confidence", type=float, default=None, help="the older spelling: --delta 1-C")
    p.add_argument("--tolerance", type=float, default=AdaptivePlan.tolerance,
                   help="ties: see AdaptivePlan.tolerance (0 = exact race)")
    p.add_argument("--growth", type=float, default=0.0, help="a mask's steps of images grow by this "
                   "(default: AdaptivePlan's)")
    p.add_argument("--share", type=float, default=0.0, help="challengers measured per round (default: AdaptivePlan's)")
    p.add_argument("--test-data", default="", help="test images (default: the run's test split)")
    p.add_argument("--held-out", type=int, default=0, metavar="K",
                   help="test on K new faces per identity of the run's synthetic identities, disjoint from every "
                   "training image by construction (the default run's 80 identities: 25 gives 2,000 faces, 125 "
                   "gives 10,000); overrides --test-data")
    p.add_argument("--bounds", default=AdaptivePlan.bounds, choices=("hypergeometric", "kl-serfling"),
                   help="the race's bounds (AdaptivePlan.bounds)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--full-cache", default="", help="Parquet file keeping full mode's per-mask table between runs "
                   "with the same masks, test data and run (to compare adaptive settings); written when missing")
    args = p.parse_args()
    n_masks = args.masks or (600 if args.quick else 2000)
    plan = AdaptivePlan(first=args.first, delta=args.delta, confidence=args.confidence, tolerance=args.tolerance,
                        growth=args.growth or AdaptivePlan.growth, share=args.share or AdaptivePlan.share,
                        bounds=args.bounds)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from maskcrypt.config import EvalSettings
    from maskcrypt.data import load
    from maskcrypt.determine.race import evaluate_adaptive
    from maskcrypt.evaluation.crossproduct import evaluate_masks
    from maskcrypt.evaluation.testset import prepare_test
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.masks.generate import generate_into
    from maskcrypt.selection.race import oracle_passes, simulate_race
    from maskcrypt.selection.rules import per_mask_table, rank_masks

    run = Path(args.run)
    record = run / "run.json"
    if not (run / "models" / "encrypted").exists() or not record.exists():
        print(f"error: {run} has no trained E; run `make run` first (or pass --run)", file=sys.stderr)
        return 2
    prep = json.loads(record.read_text())["prepare"]
    if args.held_out:
        from maskcrypt.data import parse_spec
        from maskcrypt.data.synthetic import held_out_spec

        source = parse_spec(prep["data"])
        if source.kind != "synthetic":
            print(f"error: --held-out needs a run on synthetic data, {run} uses {prep['data']}", file=sys.stderr)
            return 2
        args.test_data = held_out_spec(source.get("identities"), args.held_out)
    test = load(args.test_data or prep["data"], default_split="test", size=prep["size"])
    ts = prepare_test(test.images, test.labels, test.class_names, test.class_names, confirm_fraction=0.0)
    models = {"E": run / "models" / "encrypted"}
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    settings = EvalSettings(actors=args.actors, masks_per_block=32)
    full_settings = EvalSettings(actors=args.actors, masks_per_block=32, per_image=True)  # every face's answer
    with tempfile.TemporaryDirectory() as tmp:
        lib = MaskLibrary.create(str(Path(tmp) / "masks"), prep["size"], prep["size"])
        generate_into(lib, n_masks, seed=7)
        buckets = sorted({int(b) for b in lib.column("bucket")} - {-1})
        key = json.dumps({"masks": n_masks, "test": args.test_data or prep["data"], "run": str(run.resolve()),
                          "trained": (run / "models" / "encrypted").stat().st_mtime_ns, "answers": "hits_E"})
        cache = Path(args.full_cache) if args.full_cache else None
        if cache is not None and cache.exists() and pq.read_metadata(cache).metadata.get(b"key") == key.encode():
            table = pq.read_table(cache)
            full, t_full = table.to_pandas(), float(table.schema.metadata[b"seconds"])
            print(f"full mode read from {cache} (measured earlier in {t_full:.1f} s)")
        else:
            t0 = time.perf_counter()
            full = per_mask_table(evaluate_masks(lib, ts, models, buckets=buckets, settings=full_settings)
                                  .assign(correct_O=0).drop(columns="split"))
            t_full = time.perf_counter() - t0
            if cache is not None:
                table = pa.Table.from_pandas(full, preserve_index=False)
                pq.write_table(table.replace_schema_metadata({"key": key, "seconds": str(t_full)}), cache)
        t0 = time.perf_counter()
        counts, rounds = evaluate_adaptive(lib, ts, models, buckets, keep=args.keep, settings=settings, plan=plan)
        t_fast = time.perf_counter() - t0
    fast = per_mask_table(counts.assign(correct_O=0).drop(columns="split"))
    passes_full = len(full) * len(ts)
    passes_fast = sum(r["forward_passes"] for r in rounds)
    acc = full.set_index("mask_id")["third"]
    agree = True
    for b in buckets:
        for k in sorted({3, args.keep}):
            kth = rank_masks(full, [b]).head(k)["third"].min()
            picked = rank_masks(fast, [b]).head(k)["mask_id"]
            ok = bool((acc[picked] >= kth - plan.tolerance - 1e-12).all())
            agree &= ok
            if not ok:
                print(f"bucket {b}, top {k}: adaptive picked {list(picked)}, full k-th accuracy {kth:.4f}")
    first = plan.first_for(n_masks, len(ts), args.keep, len(buckets))
    print(f"{n_masks} masks x {len(ts)} images, E only, {args.actors} actors; keep {args.keep} per bucket, "
          f"first round {first} images, growth {plan.growth}, share {plan.share}, "
          f"error probability {plan.delta:g} (every mask, bucket and step together), tolerance {plan.tolerance}")
    for r in rounds:
        print(f"  round {r['round']}: {r['masks']} masks, {r['images']:,} masked images, "
              f"{r['forward_passes']:,} forward passes, {r['open']} open after, {r['seconds']} s")
    done = counts[counts["n"] == len(ts)]
    print(f"masks measured on every image: {len(done)}; images per mask: median {counts['n'].median():.0f}, "
          f"max {counts['n'].max()}")
    where = {w: sum(r[f"images_{w}"] for r in rounds) for w in ("first", "boundary", "complete")}
    print("where the race's masked images went: " + ", ".join(f"{w} {v:,} ({v / max(passes_fast, 1):.0%})"
                                                              for w, v in where.items()))
    print(f"full: {passes_full:,} forward passes in {t_full:.1f} s; adaptive: {passes_fast:,} in {t_fast:.1f} s")
    print(f"top-k agreement (within the tolerance {plan.tolerance}, k = 3 and {args.keep}, every bucket): "
          f"{'yes' if agree else 'NO'}")
    spread = full.groupby("bucket")["third"].agg(["min", "max", "mean"])
    print("E's per-mask accuracy per bucket (full mode):")
    print(spread.to_string(float_format=lambda v: f"{v:.3f}"))
    # Every face's answer under every mask, in the order the race revealed the faces (AdaptivePlan.seed's order of
    # the selection probes, which are every test image here).
    reveal = np.random.default_rng([plan.seed, 0xADA]).permutation(len(ts))
    answers = np.stack([np.unpackbits(np.frombuffer(h, np.uint8))[:len(ts)] for h in full["hits_E"]]).astype(bool)
    answers = answers[:, reveal]
    masks_b = full["bucket"].to_numpy()
    oracle = oracle_passes(answers, masks_b, args.keep, plan)
    _, replay_rounds = simulate_race(answers, masks_b, args.keep, plan)
    replayed = sum(r["images"] for r in replay_rounds)
    print(f"oracle (knows each bucket's {args.keep}-th, exact bounds at delta / 2M): {oracle:,} masked images, "
          f"{passes_full / oracle:.2f}x fewer than full mode; the race reaches {oracle / passes_fast:.2f} of it")
    print(f"replay of the pure race on full mode's answers: {replayed:,} masked images in {len(replay_rounds)} "
          f"rounds (the Ray race: {passes_fast:,} in {len(rounds)})")
    ratios = []
    for b in buckets:
        rows = np.flatnonzero(masks_b == b)
        near = rows[np.argsort(-full["third"].to_numpy()[rows], kind="stable")[:2 * args.keep]]
        x = answers[near].astype(np.float64)
        var = x.var(axis=1)
        for i in range(len(near)):
            for j in range(i + 1, len(near)):
                if var[i] + var[j] > 0:
                    ratios.append(float((x[i] - x[j]).var() / (var[i] + var[j])))
    pair_ratio = float(np.median(ratios)) if ratios else float("nan")
    print(f"shared difficulty: Var(X_i - X_j) / (Var X_i + Var X_j) over faces for the {2 * args.keep} best masks "
          f"of each bucket, {len(ratios)} pairs: median {pair_ratio:.2f}, quartiles "
          f"{np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f} (1 = independent faces, 0 = the same)")
    print(f"RESULT adaptive_forward_pass_reduction {passes_full / passes_fast:.2f}")
    print(f"RESULT race_oracle_reduction {passes_full / oracle:.2f}")
    print(f"RESULT adaptive_replay_passes {replayed}")
    print(f"RESULT adaptive_pair_variance_ratio {pair_ratio:.3f}")
    print(f"RESULT adaptive_wall_time_reduction {t_full / t_fast:.2f}")
    print(f"RESULT adaptive_topk_agreement {int(agree)}")
    print(f"RESULT adaptive_error_probability {plan.delta:g}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
