"""Kami: a self-hosted shop and automatic delivery engine for virtual goods."""

__version__ = "0.1.0"
