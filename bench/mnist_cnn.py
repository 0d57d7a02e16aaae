"""MNIST CNN, two participants, five rounds, federated through a real local platform.

    .venv/bin/python bench/mnist_cnn.py                       # all 60,000 training images, 5 rounds x 1 epoch
    .venv/bin/python bench/mnist_cnn.py --rows 12000 --rounds 5
    WERKBUND_MNIST_DIR=/path/to/datasets/mnist .venv/bin/python bench/mnist_cnn.py --platform inproc

The CNN travels in the task definition's ``model`` field (Keras JSON, loaded in safe mode by
``model_from_architecture``): Rescaling(1/255), two 3x3 convolutions (32, 64) with max pooling,
dropout, a dense layer of 128 and a softmax over the 10 digits. The training images are split
into two disjoint halves, one per participant; each participant tests every round's global model
on its half of the 10,000 MNIST test images, so the combined figure is the accuracy on all of them.
The MUSKETEER seed (D3.3) reached 98.9 % test accuracy in this setting.

Prints the test accuracy per round, the final accuracy and the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def cnn_architecture() -> dict:
    import keras

    model = keras.Sequential([
        keras.Input(shape=(784,), name="pixels"),
        keras.layers.Rescaling(1.0 / 255.0),
        keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="mnist_cnn")
    return json.loads(model.to_json())


class RoundPrinter:
    """The aggregator's progress, one line per round on stderr."""

    def __init__(self, started: float):
        self.started = started

    def __getattr__(self, name):  # message, epochs_started, ...: nothing to print
        return lambda *args, **kwargs: None

    def round_done(self, number, total, summary):
        print(f"  round {number + 1}/{total} aggregated at {time.monotonic() - self.started:.0f} s: {summary}",
              file=sys.stderr, flush=True)


def first_rows(data, n: int):
    from werkbund.algorithms.data.dataset import Dataset

    return Dataset(data.x[:n], data.y[:n], data.features, data.target, source=data.source)


def default_mnist_dir() -> str | None:
    """$WERKBUND_MNIST_DIR, else the mnist/ folder of $WERKBUND_DATA_DIR, else None (--mnist-dir is needed)."""
    if os.environ.get("WERKBUND_MNIST_DIR"):
        return os.environ["WERKBUND_MNIST_DIR"]
    if os.environ.get("WERKBUND_DATA_DIR"):
        return str(Path(os.environ["WERKBUND_DATA_DIR"]) / "mnist")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-dir", default=default_mnist_dir(), required=default_mnist_dir() is None,
                        help="folder with the four MNIST IDX .gz files "
                             "(default: $WERKBUND_MNIST_DIR, else $WERKBUND_DATA_DIR/mnist)")
    parser.add_argument("--rows", type=int, default=60000, help="training images used (split in two)")
    parser.add_argument("--test-rows", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--platform", choices=["local", "inproc"], default="local")
    args = parser.parse_args()

    from werkbund.algorithms.data.builtin import load_mnist
    from werkbund.usecases.federation import run_federated

    started = time.monotonic()
    train = first_rows(load_mnist(args.mnist_dir, "train"), args.rows)
    test = first_rows(load_mnist(args.mnist_dir, "test"), args.test_rows)
    sites = {"plant_a": (train.shard(1, 2), test.shard(1, 2)), "plant_b": (train.shard(2, 2), test.shard(2, 2))}
    definition = {"rounds": args.rounds, "epochs": args.epochs, "batch_size": args.batch_size,
                  "learning_rate": args.learning_rate, "standardize": False, "model": cnn_architecture(),
                  "round_timeout": 3600, "description": "bench/mnist_cnn.py"}
    print(f"MNIST CNN: 2 participants x {len(train) // 2} training images, {len(test)} test images, "
          f"{args.rounds} rounds x {args.epochs} epoch(s), batch {args.batch_size}, Adam {args.learning_rate}, "
          f"platform {args.platform}; {os.cpu_count()} CPU(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_federated("bench-mnist-cnn", sites, definition, Path(tmp), platform=args.platform,
                            progress=RoundPrinter(started))
    wall = time.monotonic() - started
    print(f"{'round':>5}  {'test accuracy':>13}  {'plant_a':>8}  {'plant_b':>8}  {'round s':>8}")
    for h in run["history"]:
        parts = h.get("participants", {})
        print(f"{h['round'] + 1:>5}  {h['accuracy']:>13.4f}  {parts.get('plant_a', {}).get('accuracy', float('nan')):>8.4f}"
              f"  {parts.get('plant_b', {}).get('accuracy', float('nan')):>8.4f}  {h.get('duration_s', float('nan')):>8.1f}")
    final = run["history"][-1]["accuracy"]
    print(f"final test accuracy {final:.4f} (MUSKETEER seed: 0.9890); federated run {run['wall_s']:.1f} s, "
          f"wall time with loading {wall:.1f} s; model {run['model_bytes']} bytes")


if __name__ == "__main__":
    main()
