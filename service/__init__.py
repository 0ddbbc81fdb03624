"""Shears: a REST service that prunes neural networks."""

__version__ = "0.1.0"
