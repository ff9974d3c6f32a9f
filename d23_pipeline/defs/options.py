"""The non-secret ``D23_*`` settings, read and validated once, when the definitions load.

Two modules read them: ``definitions.py``, which passes them on as resource config, the sensor's
schedule and the outcome-mix code version, and ``partitions.py``, because the partitions
definition must exist before the asset modules that import it are decorated.
"""

from d23_pipeline.settings import load_options

options = load_options()
