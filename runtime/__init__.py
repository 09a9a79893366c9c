"""Torch-free UnionCAM runtime around the exported graphs."""
