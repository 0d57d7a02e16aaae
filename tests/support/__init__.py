"""Helpers the unit and end-to-end tests share (tests/ is on sys.path: pyproject's pytest pythonpath)."""
