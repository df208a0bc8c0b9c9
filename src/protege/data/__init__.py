"""Data in: the canonical record, datasets in the workspace, importers, quality checks."""
