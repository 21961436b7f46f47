"""invoice-reconciler: the safety net between payment providers and a shop's database."""

__version__ = "0.1.0"
