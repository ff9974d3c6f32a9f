"""D23 contact outcomes, from the ClearGrid Exports API into the lender's own warehouse."""

import os

# Arrow's bundled mimalloc keeps much of what it frees (a heap per reader thread): a 1M-row
# month's whole `dagster asset materialize` peaked 15-25 MB higher with it (390-401 MB against
# 369-378, benchmarks/README.md) and landed it with ~10 % more CPU. pyarrow's set_memory_pool
# is not enough (Arrow's C++ code, the JSON reader and Parquet among it, keeps allocating from
# mimalloc), so the default itself is chosen here, before any module of the package imports
# pyarrow; a value the operator sets wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
