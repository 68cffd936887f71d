"""`python -m pipeline_v2` is the `pipeline` CLI."""

from pipeline_v2.cli import main

main()
