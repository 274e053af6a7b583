"""MetaWorld's observation and action dimensions (other environments define their own).

The observation format itself (keys, :func:`stack_observations`) is :mod:`gaflow.observations`.
"""

STATE_DIM = 4
ENV_STATE_DIM = 39
ACTION_DIM = 4
