"""Datasets: scripted demonstrations written as LeRobotDataset v3 (``demos``) and the loader that training
uses (``dataset``). LeRobot is imported only when a dataset is actually written or read."""

from gaflow.data.dataset import (
    EPISODE_FEATURES,
    REQUIRED_FEATURES,
    DatasetError,
    episode_table,
    load_dataset,
    read_info,
)
from gaflow.data.demos import FEATURES, DemoConfig, EpisodeRecord, features, write_demos

__all__ = [
    "EPISODE_FEATURES",
    "FEATURES",
    "REQUIRED_FEATURES",
    "DatasetError",
    "DemoConfig",
    "EpisodeRecord",
    "episode_table",
    "features",
    "load_dataset",
    "read_info",
    "write_demos",
]
