"""``big_model``: a model that is one float32 vector of ``floats`` weights and training that is a
fixed small step, for issue 15's large-model round (``bench/vs_flower.py --part b``).

The work is nothing next to moving the model, so a round's time and memory are the framework's: the
broadcast, the updates, their checks and the weighted mean. It is a plug-in (an entry point in
``werkbund.algorithms``), installed the way a third-party algorithm is, not a built-in.

The aggregator holds one float32 vector: the global model, and, once the round's broadcast went
out, the running sum in the same memory (``reuses_global_arrays``: the engine keeps the broadcast in
a temporary file for a participant that asks for it again). It adds each update into the sum in
slices, so what it allocates itself is the model once; anything above that in its peak memory is
the engine's and the transport's (the update being added, as received). To show where that memory is, every round record carries
(``round_metrics``) the resident memory of the aggregator when the round begins and as each update
is handed to it, and of each participant as ``train`` is called and after its step (Linux: VmRSS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from werkbund.algorithms.arrays import encode_weights
from werkbund.algorithms.engine.aggregator import RoundAggregator
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.registry import Algorithm, Field

SLICE = 1 << 22  # floats added at a time: the temporary of ``n * w`` stays at 16 MiB


def rss_mib() -> float | None:
    """This process's resident memory now (None where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class BigModelAggregator(RoundAggregator):
    weighted_mean_update = True
    reuses_global_arrays = True  # the sum takes the global vector's memory once the round's updates come in

    def setup(self):
        self.weights = [np.zeros(self.definition["floats"], np.float32)]

    def global_weights(self):
        return self.weights

    def begin_round(self, number):
        self.memory = {"aggregator_at_begin_round": rss_mib(), "aggregator_at_accept_update": [], "participants": []}
        self.sum, self.total = None, 0

    def accept_update(self, update):
        self.memory["aggregator_at_accept_update"].append(rss_mib())
        self.memory["participants"].append(update.get("memory"))
        (w,), n = update.weights, update.n_samples
        first = self.sum is None
        if first:  # the broadcast went out: the global vector's memory becomes the running sum
            (self.sum,), self.weights = self.weights, None
        for start in range(0, w.size, SLICE):
            part = slice(start, start + SLICE)
            if first:
                np.multiply(w[part], np.float32(n), out=self.sum[part])
            else:
                self.sum[part] += np.float32(n) * w[part]
        self.total += n

    def aggregate(self, number):
        self.sum /= np.float32(self.total)
        self.weights, self.sum = [self.sum], None

    def round_metrics(self, number):
        return {"memory_mib": self.memory}

    def final_model(self):
        return encode_weights(self.weights), {"algorithm": "big_model", "format": "safetensors",
                                              "floats": self.definition["floats"]}


class BigModelParticipant(RoundParticipant):
    def evaluate_global(self, message):
        return {}

    def train(self, message):
        """The global vector plus a fixed step (the same every round, so the run is reproducible)."""
        at_train = rss_mib()
        (w,) = self.global_weights(message)
        update = [w + np.float32(self.definition["step"])]
        return update, {"n_samples": len(self.train_data.x), "memory": {"at_train": at_train, "after_step": rss_mib()}}

    def keep_final(self, message):
        (w,) = self.global_weights(message)
        return {"eval": {}, "model": {"floats": int(w.size), "mean": float(w.mean())}}


ALGORITHM = Algorithm(
    name="big_model",
    aggregator=BigModelAggregator,
    participant=BigModelParticipant,
    description="one float32 vector of `floats` weights, each round the global vector plus `step` (a benchmark)",
    fields=(Field("floats", int, 1000, "weights in the model, one float32 vector", minimum=1),
            Field("step", float, 1e-3, "what each participant adds to every weight a round")),
    privacy_modes=frozenset({1}),
    model_suffix=".safetensors",
)
