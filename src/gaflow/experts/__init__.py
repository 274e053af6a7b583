"""Scripted experts that generate demonstrations from privileged simulator state (not part of the method: they
feed ``gaflow.demos``). Import the module you need; each pulls in its simulator.

``gaflow.experts.metaworld`` — MetaWorld's own scripted policies (``MetaWorldExpert``).
``gaflow.experts.libero_pick_place`` — single On/In pick-and-place goals of LIBERO.
"""
