"""Behavioral vs hidden-state semantic geometry pipeline (Schiekiera et al., ICML 2026)."""

import os as _os

# Spinning OpenMP threads starve each other when a vLLM engine, its worker and the driver
# share a few cores (a forward pass measured 6x slower); passive waiting costs little
# alone. Must be set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# The config validates backend names and keys through the registry that `backends` hands it
# (`config.bind_backends`); importing it here binds it before any config is loaded, while
# `config` itself never imports `backends`.
from . import backends as _backends  # noqa: E402,F401
