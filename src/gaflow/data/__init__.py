"""Datasets: the one LeRobotDataset v3 writer (``writer``) and the loader that training uses (``dataset``).
LeRobot is imported only when a dataset is actually written or read. Recording demonstrations is a stage:
:mod:`gaflow.demos`."""

from gaflow.data.dataset import (
    EPISODE_FEATURES,
    REQUIRED_FEATURES,
    DatasetError,
    episode_table,
    load_dataset,
    read_info,
)
from gaflow.data.writer import COLUMNS, DatasetWriter, check_target

__all__ = [
    "COLUMNS",
    "EPISODE_FEATURES",
    "REQUIRED_FEATURES",
    "DatasetError",
    "DatasetWriter",
    "check_target",
    "episode_table",
    "load_dataset",
    "read_info",
]
