"""The algorithms werkbund ships: neural_network (Keras), logistic and linear regression
(linear_models), kmeans and federated_statistics. Each is an aggregator and a participant on the round
engine (algorithms/engine/) plus a declaration the registry reads through the ``werkbund.algorithms``
entry points (setup.cfg); a plug-in algorithm has the same shape (docs/writing-an-algorithm.md)."""
