"""Training: a CLIP's image side learned against a frozen text tower (clip-train).

Nothing is imported here, so ``python -m model.training --bundle`` runs on a host with only torch
and numpy.
"""
