"""Fixtures for tests and benchmarks — not library code.

Nothing in the library's layers imports this package; it may import any of them. Its modules build stand-ins
(random-weight models, tiny checkpoints) that run offline in seconds:

* :mod:`gaflow.testing.lerobot_tiny` — LeRobot SmolVLA / π0 / π0.5 with random weights, their checkpoints and
  example observations. Importing it registers the load hook its checkpoints need.
"""
