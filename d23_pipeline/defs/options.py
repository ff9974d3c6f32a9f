"""The non-secret ``D23_*`` settings, read and validated once, when the definitions load."""

from d23_pipeline.settings import load_options

options = load_options()
