"""Differential privacy: DP-SGD, its accounting and the task's privacy budget."""
