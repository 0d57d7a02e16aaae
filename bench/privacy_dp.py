"""DP-SGD accuracy against non-private training on AI4I 2020, federated over three companies.

    .venv/bin/python bench/privacy_dp.py --data-dir /path/to/datasets      # or set WERKBUND_DATA_DIR
    .venv/bin/python bench/privacy_dp.py --data-dir "$WERKBUND_DATA_DIR" --epsilon 1 --epsilon 3 --rounds 5 --epochs 2

The three sites are the product quality types L, M and H of AI4I (``usecases/data.py``:
the five numeric features, target ``Machine failure``, a stratified 80/20 split per site). Each
setting runs the real task (``neural_network``: an MLP with one hidden layer of 16 by default,
``--hidden 64,32`` is the platform's default network; federated standardization, FedAvg) through
the in-process platform with the same rounds, epochs, batch size, learning rate and model:
once without DP and once per target epsilon (delta 1e-5 by default), the noise calibrated by the
aggregator for the planned rounds. The final global model is scored on the pooled test rows of
all sites. AI4I is imbalanced (about 3.4 % failures, so predicting "no failure" everywhere
scores about 0.966), so balanced accuracy and the F1 of the failure class are printed next to
the accuracy; the gap is non-private minus DP, in points. ``run()`` returns the figures for
``bench/privacy.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _scores(model, test) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    predicted = np.argmax(np.asarray(model.predict(test.x, verbose=0, batch_size=2048)), axis=1)
    y = np.asarray(test.y).astype(int)
    return {"accuracy": float(np.mean(predicted == y)), "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
            "f1_failure": float(f1_score(y, predicted, zero_division=0.0)),
            "predicted_failures": int(predicted.sum()), "true_failures": int(y.sum()), "n_test": int(len(y))}


SCORES = ("accuracy", "balanced_accuracy", "f1_failure")


def run(data_dir: str | Path, epsilons=(1.0, 3.0), delta: float = 1e-5, rounds: int = 8, epochs: int = 5,
        batch_size: int = 512, learning_rate: float = 0.05, l2_norm_clip: float = 5.0, seed: int = 0,
        rows: int | None = None, platform: str = "inproc", hidden: tuple = (16,), repeats: int = 1,
        tick=None) -> dict:
    """Train non-privately and at each epsilon, ``repeats`` times each (the DP noise is drawn fresh
    every time); return the settings, the mean scores (and each run's) and the gaps in points."""
    from werkbund.algorithms import keras_models as km
    from werkbund.usecases.data import load_ai4i
    from werkbund.usecases.federation import run_federated

    scenario = load_ai4i(data_dir, rows=rows, seed=seed)
    test = scenario.pooled(1)
    base = {"rounds": rounds, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
            "seed": seed, "round_timeout": 1800}
    if tuple(hidden) != (64, 32):  # the platform's default MLP has hidden layers of 64 and 32
        model = km.default_network(len(scenario.features), len(scenario.classes), hidden=tuple(hidden))
        base["model"] = json.loads(model.to_json())
    settings = [("non-private", None)] + [(f"DP eps={e:g}", {"epsilon": float(e), "delta": delta,
                                                            "l2_norm_clip": l2_norm_clip}) for e in epsilons]
    out = {"sites": {name: {"train": len(tr), "test": len(te), "failures_train": int(np.sum(tr.y))}
                     for name, (tr, te) in scenario.sites.items()},
           "config": dict({k: v for k, v in base.items() if k != "model"}, hidden=list(hidden), delta=delta,
                          l2_norm_clip=l2_norm_clip, rows=rows, platform=platform, repeats=repeats),
           "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, dp in settings:
            runs = []
            for repeat in range(repeats):
                if tick:
                    tick(f"{label}: training (run {repeat + 1} of {repeats})")
                definition = dict(base, **({"dp": dp} if dp else {}))
                started = time.monotonic()
                fed = run_federated(f"dp-bench-{len(out['results'])}-{repeat}", scenario.sites, definition,
                                    Path(tmp) / f"{label}-{repeat}", platform=platform,
                                    schema_overrides={"classes": scenario.classes})
                result = _scores(fed["model"], test)
                result["wall_s"] = round(time.monotonic() - started, 1)
                if dp:
                    spent = fed["meta"].get("dp") or {}
                    result.update(epsilon_spent=spent.get("epsilon"), noise_multiplier=spent.get("noise_multiplier"),
                                  rounds_trained=spent.get("rounds_trained"))
                runs.append(result)
            mean = dict(runs[-1], **{k: float(np.mean([r[k] for r in runs])) for k in SCORES + ("wall_s",)})
            mean["runs"] = [{k: r[k] for k in SCORES} for r in runs]
            out["results"][label] = mean
    plain = out["results"]["non-private"]
    out["gaps_points"] = {label: {k: round(100 * (plain[k] - r[k]), 2) for k in SCORES}
                          for label, r in out["results"].items() if label != "non-private"}
    return out


def _each(runs: list[dict]) -> str:
    return ", ".join(f"{r['balanced_accuracy']:.3f}" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("WERKBUND_DATA_DIR") or None,
                        required=not os.environ.get("WERKBUND_DATA_DIR"),
                        help="folder with ai4i2020/ (default: $WERKBUND_DATA_DIR; docs/datasets.md)")
    parser.add_argument("--epsilon", type=float, action="append")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--hidden", default="16", help="hidden layer sizes of the MLP (64,32: the platform's default)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting, averaged (the DP noise differs)")
    parser.add_argument("--rows", type=int, default=None, help="use a sample of the 10000 rows (faster)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    figures = run(args.data_dir, tuple(args.epsilon or (1.0, 3.0)), args.delta, args.rounds, args.epochs,
                  args.batch_size, args.learning_rate, args.clip, args.seed, args.rows,
                  hidden=tuple(int(h) for h in args.hidden.split(",")), repeats=args.repeat,
                  tick=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    print(f"AI4I 2020, Machine failure, 3 sites (types L/M/H): {json.dumps(figures['sites'])}")
    print(f"config: {json.dumps(figures['config'])}; {os.cpu_count()} CPU(s)")
    print(f"{'setting':<14} {'accuracy':>9} {'bal.acc':>8} {'F1 fail':>8} {'eps spent':>10} {'noise mult.':>28} {'wall s':>7}")
    for label, r in figures["results"].items():
        noise = ", ".join(f"{p.split('_')[-1]} {s:.2f}" for p, s in sorted((r.get("noise_multiplier") or {}).items())) or "-"
        eps = f"{r['epsilon_spent']:.3f}" if r.get("epsilon_spent") is not None else "-"
        print(f"{label:<14} {r['accuracy']:>9.4f} {r['balanced_accuracy']:>8.4f} {r['f1_failure']:>8.4f} {eps:>10} "
              f"{noise:>28} {r['wall_s']:>7.1f}" + (f"   each run's bal.acc {_each(r['runs'])}" if len(r["runs"]) > 1 else ""))
    print("majority-class baseline (always 'no failure'): accuracy "
          f"{1 - next(iter(figures['results'].values()))['true_failures'] / next(iter(figures['results'].values()))['n_test']:.4f}, "
          "balanced accuracy 0.5000, F1 0")
    for label, gap in figures["gaps_points"].items():
        verdict = "within" if gap["accuracy"] <= 3 else "NOT within"
        print(f"gap non-private minus {label}: accuracy {gap['accuracy']:+.2f} points ({verdict} the 3-point target), "
              f"balanced accuracy {gap['balanced_accuracy']:+.2f}, F1 {gap['f1_failure']:+.2f}")
    print(f"total {time.monotonic() - started:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
