"""Throughput benchmarks: every loader and the training step, beside the torchvision baseline."""
