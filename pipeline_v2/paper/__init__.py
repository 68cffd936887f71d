"""The reference paper trader (`python -m pipeline_v2.paper`)."""
