"""gaflow — Guided Action Flow: test-time Q-guidance for frozen flow-matching robot policies."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("gaflow")
except PackageNotFoundError:  # running from a source tree (PYTHONPATH=src)
    __version__ = "0+source"
