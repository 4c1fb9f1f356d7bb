"""Hugging Face checkpoint -> glmcpu model file, without torch."""
from .convert import convert

__all__ = ["convert"]
