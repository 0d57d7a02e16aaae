"""Keras models for federated training: build, load safely, save to bytes.

Architectures travel as Keras JSON and are loaded with ``safe_mode=True``;
every class named in them must come from Keras itself, so joining a task
never makes anyone import code chosen by someone else.
"""
from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:  # TenSEAL (POM 3) must load before TensorFlow: both carry protobuf, and TenSEAL loaded second segfaults
    import tenseal  # noqa: E402,F401
except ImportError:  # then POM 3 is unavailable; nothing else changes
    pass
import keras  # noqa: E402
import numpy as np  # noqa: E402


class ArchitectureRejected(ValueError):
    """A model architecture that is not plain Keras or does not fit the data."""


def default_network(n_features: int, n_classes: int, mean=None, variance=None, hidden=(64, 32)) -> keras.Model:
    """An MLP from raw features to class probabilities; standardization lives inside the model."""
    layers = _mlp_layers(n_features, mean, variance, hidden)
    layers.append(keras.layers.Dense(n_classes, activation="softmax", name="classes"))
    return keras.Sequential(layers, name="werkbund_mlp")


def default_regressor(n_features: int, mean=None, variance=None, target_mean=None, target_std=None,
                      hidden=(64, 32)) -> keras.Model:
    """An MLP from raw features to one linear output. With the target's (federated) mean and standard
    deviation, the output is rescaled to the target's units (``y = out * std + mean``): training starts
    at the mean and the network works on a standardized target."""
    layers = _mlp_layers(n_features, mean, variance, hidden)
    layers.append(keras.layers.Dense(1, activation="linear", name="target"))
    if target_mean is not None:
        layers.append(keras.layers.Rescaling(scale=float(target_std), offset=float(target_mean), name="target_scale"))
    return keras.Sequential(layers, name="werkbund_mlp_regressor")


def _mlp_layers(n_features: int, mean, variance, hidden) -> list:
    layers = [keras.Input(shape=(n_features,), name="features")]
    if mean is not None:
        layers.append(keras.layers.Normalization(mean=np.asarray(mean).tolist(), variance=np.asarray(variance).tolist(),
                                                 name="standardize"))
    for i, units in enumerate(hidden):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"hidden_{i}"))
    return layers


def with_standardization(model: keras.Model, n_features: int, mean, variance) -> keras.Model:
    """Wrap a given architecture so that it takes raw features and standardizes them first."""
    inputs = keras.Input(shape=(n_features,), name="features")
    scaled = keras.layers.Normalization(mean=np.asarray(mean).tolist(), variance=np.asarray(variance).tolist(),
                                        name="standardize")(inputs)
    return keras.Model(inputs, model(scaled), name="werkbund_model")


def _check_modules(config) -> None:
    if isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and module.split(".")[0] != "keras":
            raise ArchitectureRejected(f"the architecture names code outside Keras ({module!r}); refused")
        if config.get("registered_name") and "class_name" in config and not module:
            raise ArchitectureRejected(f"the architecture names a custom object {config['registered_name']!r}; refused")
        for value in config.values():
            _check_modules(value)
    elif isinstance(config, list):
        for value in config:
            _check_modules(value)


def model_from_architecture(architecture: dict | str) -> keras.Model:
    """A model from Keras JSON, in safe mode and with Keras classes only."""
    config = json.loads(architecture) if isinstance(architecture, str) else architecture
    if not isinstance(config, dict) or "class_name" not in config:
        raise ArchitectureRejected("a model architecture must be the JSON of model.to_json()")
    _check_modules(config)
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:
        raise ArchitectureRejected(f"the architecture cannot be loaded: {exc}") from None
    if not isinstance(model, keras.Model):
        raise ArchitectureRejected("the architecture does not describe a Keras model")
    return model


def compile_classifier(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def compile_regressor(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    return model


def compile_for(kind: str, model: keras.Model, learning_rate: float) -> keras.Model:
    """Compile for the task's kind: softmax classifier (cross-entropy) or regressor (MSE)."""
    if kind == "regression":
        return compile_regressor(model, learning_rate)
    return compile_classifier(model, learning_rate)


def model_bytes(model: keras.Model) -> bytes:
    """The model as the bytes of a ``.keras`` file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            return handle.read()


class EpochCallback(keras.callbacks.Callback):
    """Reports each local epoch to a Progress."""

    def __init__(self, progress, total: int):
        super().__init__()
        self.progress, self.total = progress, total

    def on_epoch_end(self, epoch, logs=None):
        self.progress.epoch_done(epoch, self.total, {k: float(v) for k, v in (logs or {}).items()})
