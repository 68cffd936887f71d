"""Reports: one trial across its stages, the whole pipeline, the study's PBO, and HTML."""
