"""Behavioral vs hidden-state semantic geometry pipeline (Schiekiera et al., ICML 2026)."""

__version__ = "0.1.0"
