"""The store layer: the only code that speaks SQL."""
