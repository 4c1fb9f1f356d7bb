"""Hugging Face checkpoint -> glmcpu model file, without torch."""
from .pipeline import convert

__all__ = ["convert"]
