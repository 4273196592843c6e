"""E's accuracy under each bucket for a training recipe: how the embedded default was chosen.

    make run                                                    # once: the run whose mask pools this uses
    python benchmarks/e_recipe.py                               # the default recipe, ~4 min on one thread
    python benchmarks/e_recipe.py --quick                       # 2 epochs, 1 draw: the path only (~80 s)
    python benchmarks/e_recipe.py --data "synthetic:per_identity=30,test_fraction=0.2" \\
        --epochs 12 --label-smoothing 0                         # the previous default (30 faces x 12 epochs)

Trains E in this process, on one torch thread, with the pipeline's own step
(``train_loop.RecognizerSteps`` and ``train_loop.train_epoch`` over in-memory batches,
exactly what an attacker's Tune trial runs, and what a Ray Train worker runs in
``replicate`` mode), K masked copies of every training image per epoch drawn from the
run's training pool ``masks_train/``. Then every test face (the source's test split)
gets ``--draws`` random masks of each bucket of the run's selection library ``masks/``,
which E never trained with, and the accuracy per bucket is printed. Comparing recipes
at the same compute (images x epochs x K) is the point: ``RESULT`` lines give the
accuracy per bucket and the training samples seen, so two runs are compared side by side.
Two of these run side by side on 2 cores (~380-440 images/s each here, ~413 alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from maskcrypt.config import MaskSampling, ModelSettings, TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "default"), help="a prepared run (its mask pools)")
    p.add_argument("--data", default="synthetic:", help="training (train split) and test (test split) images")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--label-smoothing", type=float, default=TrainConfig().label_smoothing)
    p.add_argument("--k", type=int, default=MaskSampling().k, help="masked copies of every image per epoch")
    p.add_argument("--width", type=int, default=ModelSettings().width)
    p.add_argument("--draws", type=int, default=4, help="random masks per test face and bucket")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 epochs and 1 draw: checks the path, not a recipe")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.draws = 2, 1

    import numpy as np
    import torch

    from maskcrypt.core.precision import channels_last
    from maskcrypt.data import load
    from maskcrypt.masks import MaskLibrary
    from maskcrypt.models.predictor import Predictor
    from maskcrypt.models.recognizer import RecognizerConfig
    from maskcrypt.train.feed import array_batches, pass_seed
    from maskcrypt.train.loop import RecognizerSteps, train_epoch

    run = Path(args.run)
    if not (run / "masks_train").exists() or not (run / "masks").exists():
        print(f"error: {run} has no masks/ and masks_train/; run `make run` (or --until prepare) first",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train = load(args.data, default_split="train", size=args.size)
    test = load(args.data, default_split="test", size=args.size)
    pool = MaskLibrary.open(str(run / "masks_train")).load().masks
    tc = TrainConfig(epochs=args.epochs, label_smoothing=args.label_smoothing).to_dict()
    rc = RecognizerConfig(arch="compact", num_classes=len(train.class_names), channels=train.images.shape[1],
                          image_size=args.size, width=args.width, depth=(1, 1, 1, 1), head="softmax")
    cfg = {"role": "encrypted", "train_config": tc, "model_config": dataclasses.asdict(rc), "k": args.k,
           "masks": pool, "mask_mode": "random"}
    device = torch.device("cpu")
    steps = RecognizerSteps(cfg, device, False)
    net = steps.model.to(memory_format=torch.channels_last) if channels_last("cpu", False) else steps.model
    per_pass = len(train) // tc["batch_size"]
    steps.schedule(per_pass * steps.passes)
    data = {"image": train.images, "label": train.labels, "item": np.arange(len(train))}
    print(f"E: {len(train)} training faces x {args.k} masks x {args.epochs} epochs, label smoothing "
          f"{args.label_smoothing:g}; test {len(test)} faces", flush=True)
    for epoch in range(1, args.epochs + 1):
        stats = train_epoch(steps, net, epoch, per_pass,
                            lambda pass_, read, e=epoch: array_batches(data, pass_seed(tc["seed"], e, pass_),
                                                                       tc["batch_size"], per_pass, read=read))
        print(f"  epoch {epoch}/{args.epochs}  loss {stats.loss_sum / stats.seen:.3f}  "
              f"{stats.seen / stats.seconds:.0f} img/s", flush=True)
    net.eval()
    predictor = Predictor(net, device, "fp32")
    lib = MaskLibrary.open(str(run / "masks"))
    acc = {"no mask": predictor.accuracy(test.images, test.labels, None)}
    for b in range(1, len(lib.edges)):
        masks = lib.load([b]).masks
        if len(masks) == 0:
            continue
        draws = [predictor.accuracy(test.images, test.labels,
                                    masks[np.random.default_rng([d, b]).integers(0, len(masks), len(test))])
                 for d in range(args.draws)]
        acc[f"bucket {b}"] = float(np.mean(draws))
    for name, value in acc.items():
        print(f"RESULT e_accuracy {name}: {100 * value:.1f}%")
    print(f"RESULT e_training_samples {len(train) * args.k * args.epochs}")
    print(f"seconds {time.perf_counter() - t0:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
