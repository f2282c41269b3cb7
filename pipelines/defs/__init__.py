"""One module per domain of the asset graph."""
