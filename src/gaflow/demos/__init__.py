"""Demonstration recording (a stage: scripted expert → noisy rollouts → one LeRobotDataset v3 through
:class:`gaflow.data.writer.DatasetWriter`). Import the module you need; each pulls in its simulator.

``gaflow.demos.metaworld`` — MetaWorld's scripted policies (``gaflow demos``): ``DemoConfig``, ``write_demos``.
``gaflow.demos.libero`` — the LIBERO pick-and-place expert (``gaflow libero-demos``): ``LiberoDemoConfig``,
``record_libero_demos``.
"""
