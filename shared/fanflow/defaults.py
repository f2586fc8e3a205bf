"""Default limits, defined once: `Settings`, `Limits`, `Topology` and the executors read them.

Each is overridable per process through its `FANFLOW_*` setting (see `fanflow.settings`).
"""

#: node runs per run before it stops (Dify: 500)
MAX_STEPS = 10_000
#: a run's deadline, from its creation (Dify: 1200 s)
MAX_RUN_SECONDS = 1200.0
#: a task's time limit when neither the node nor the process says otherwise
TASK_TIMEOUT_S = 300.0
#: deliveries of one message before the broker dead-letters it (quorum queues)
DELIVERY_LIMIT = 5
#: the longest a node retry waits, whatever the node or the upstream asks for (1 h)
MAX_RETRY_DELAY_S = 3600.0
#: the longest delay a broker delay queue holds a message (24 h); longer belongs to a deadline
MAX_DELAY_MS = 24 * 3600 * 1000
#: the embedded default database: SQLite beside the working directory
DATABASE_URL = "sqlite+aiosqlite:///fanflow.db"
