"""The ServerApp: FedAvg (Flower's message-API strategy) over one float32 vector of ``floats`` weights;
writes each round's end time and its own peak memory to the JSON file ``out`` of the run config.

flwr lives in .venv-flower, not in werkbund's environment, so it is imported by name (werkbund's tests
check the modules its bench files import against werkbund's own environment)."""
import importlib
import json
import resource
import time

import numpy as np

app_mod = importlib.import_module("flwr.app")
serverapp = importlib.import_module("flwr.serverapp")
strategies = importlib.import_module("flwr.serverapp.strategy")
app = serverapp.ServerApp()


@app.main()
def main(grid, context) -> None:
    config = context.run_config
    ends: list[float] = []

    class Timed(strategies.FedAvg):
        def aggregate_train(self, server_round, replies):
            out = super().aggregate_train(server_round, replies)
            ends.append(time.time())
            return out

    strategy = Timed(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2)
    strategy.start(grid=grid, initial_arrays=app_mod.ArrayRecord([np.zeros(int(config["floats"]), np.float32)]),
                   num_rounds=int(config["rounds"]), timeout=3600)
    with open(str(config["out"]), "w") as handle:
        json.dump({"ends": ends, "serverapp_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
                  handle)
