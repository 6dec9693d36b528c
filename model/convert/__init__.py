"""Converters from other checkpoint formats into this library's checkpoint directory.

One module per source; ``python -m model.convert SOURCE ...`` dispatches (see __main__.py).
"""
