"""``dagster-daemon`` with its backfill loop every 3 s instead of Dagster's fixed 30 s.

Dagster's backfill daemon sleeps ``DEFAULT_DAEMON_INTERVAL_SECONDS`` between iterations, and
dagster.yaml has no setting for it. A backfill of the simulator's months takes three iterations
(launch the months, then the dashboard once they are in, then mark it done), so each end-to-end
test spent most of its minute asleep. Everything else is the daemon ``make run`` starts.
"""

import sys

import dagster._daemon.controller as controller
from dagster._daemon.cli import main

# The backfill loop imports the constant from the module at each call, so this reaches it.
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 3

if __name__ == "__main__":
    sys.exit(main())
