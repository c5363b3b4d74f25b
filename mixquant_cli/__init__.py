"""The ``mixquant`` command line: one module per command group (main: models/qe/search/evaluate/sweep/
allocate; compare; reconstruct/export/load). Imports mixquant_core only."""
from .main import main

__all__ = ["main"]
