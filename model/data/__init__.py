"""Datasets for training and evaluating CLIP: the JSONL index format and the emoji builder."""

from model.data.index import read_index, write_index

__all__ = ["read_index", "write_index"]
