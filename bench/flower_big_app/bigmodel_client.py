"""The ClientApp: answers the global vector plus a fixed step (flwr imported by name: see bigmodel_server.py)."""
import importlib

import numpy as np

app_mod = importlib.import_module("flwr.app")
clientapp = importlib.import_module("flwr.clientapp")
app = clientapp.ClientApp()


@app.train()
def train(msg, context):
    (weights,) = msg.content["arrays"].to_numpy_ndarrays()
    step = np.float32(context.run_config["step"])
    content = app_mod.RecordDict({"arrays": app_mod.ArrayRecord([weights + step]),
                                  "metrics": app_mod.MetricRecord({"num-examples": 8})})
    return app_mod.Message(content=content, reply_to=msg)
