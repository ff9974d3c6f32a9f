"""Every SQL statement the pipeline runs, in one place. Values always travel as parameters."""

from typing import NamedTuple

from d23_pipeline.kpis import COUNTS, KPI_NAMES, KPIS
from d23_pipeline.schema import BOOL_FIELDS, D23_FIELDS, STRING_FIELDS, TIMESTAMP_FIELDS

# Every session's: UTC, and DuckDB's default planning (a lake's sessions share one DuckDB instance,
# whose settings are global, and a merge that failed in store.join_sides_as_written left it set).
SESSION_SETUP = "SET TimeZone = 'UTC'; RESET disabled_optimizers"
BEGIN = "BEGIN TRANSACTION"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# The counts and rates of the two KPI tables (see _kpi_select); the rates are d23_pipeline.kpis'.
_KPI_COUNTS = (*(count.column for count in COUNTS), "unmapped_attempts")
_KPI_COLUMNS = ",\n".join(
    [f"    {count:<20} BIGINT NOT NULL" for count in _KPI_COUNTS]
    + [f"    {kpi.name:<20} DOUBLE" for kpi in KPIS]
)
_KPI_RATES = ",\n    ".join(
    f"{kpi.numerator.column} / nullif({kpi.denominator.column}, 0) AS {kpi.name}" for kpi in KPIS
)

# d23.logs' nine data columns, typed from the contract in schema.py (timestamps in UTC).
_SQL_TYPES = {
    **dict.fromkeys(STRING_FIELDS, "VARCHAR"),
    **dict.fromkeys(BOOL_FIELDS, "BOOLEAN"),
    **dict.fromkeys(TIMESTAMP_FIELDS, "TIMESTAMPTZ"),
}
_LOGS_FIELD_COLUMNS = ",\n    ".join(
    f"{name:<18} {_SQL_TYPES[name]:<11} NOT NULL" for name in D23_FIELDS
)

# The folder ($D23_DATA_DIR/raw/d23) whose raw snapshots the runs of this warehouse land in and
# weigh (landing/home.py): at most one row. Made by the first merge that records one, not with the
# schema: a lake's read-only users (the analysts' loader) make the schema too, and cannot write.
CREATE_LANDING_HOME = """
CREATE TABLE IF NOT EXISTS d23.landing_home (
    data_dir_id VARCHAR     NOT NULL,
    raw_dir     VARCHAR     NOT NULL,
    host        VARCHAR     NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL
)"""

CREATE_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS d23;

CREATE TABLE IF NOT EXISTS d23.logs (
    {_LOGS_FIELD_COLUMNS},
    _partition         VARCHAR     NOT NULL,
    _first_seen_at     TIMESTAMPTZ NOT NULL,
    _last_seen_at      TIMESTAMPTZ NOT NULL,
    _deleted_at        TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS d23.rejected_rows (
    _partition         VARCHAR     NOT NULL,
    slice_since        TIMESTAMPTZ NOT NULL,
    slice_until        TIMESTAMPTZ NOT NULL,
    public_id          VARCHAR,
    reason             VARCHAR     NOT NULL,
    allowlisted_values VARCHAR     NOT NULL,
    rejected_at        TIMESTAMPTZ NOT NULL
);

-- How each slice of each month was last read: what it served against the API's exact counts
-- taken before and after its walk, and whether that proves the read complete. Replaced per
-- month by every merge.
CREATE TABLE IF NOT EXISTS d23.slice_verification (
    _partition   VARCHAR     NOT NULL,
    slice_since  TIMESTAMPTZ NOT NULL,
    slice_until  TIMESTAMPTZ NOT NULL,
    served       BIGINT      NOT NULL,
    total_before BIGINT,
    total_after  BIGINT,
    verified     BOOLEAN     NOT NULL,
    reads        INTEGER     NOT NULL,
    read_at      TIMESTAMPTZ NOT NULL
);

-- Rows of each month that look deleted at the source but were not marked deleted by the month's
-- last merged read: not proven gone by that read (and why), or proven gone but held back above
-- the allowed share until an operator confirms. Replaced per month by every merge; only those
-- still live in their month count (DELETIONS_PENDING_ALL): an older read merged later, or a
-- row's move, may have settled some since.
CREATE TABLE IF NOT EXISTS d23.deletions_pending (
    _partition VARCHAR     NOT NULL,
    public_id  VARCHAR     NOT NULL,
    held       BOOLEAN     NOT NULL,
    reason     VARCHAR     NOT NULL,
    read_at    TIMESTAMPTZ NOT NULL
);

-- The one row every month's merge updates (RECORD_MERGE), so that on DuckLake any two merges
-- open at once conflict: DuckLake lets two transactions that only insert into a table both
-- commit, and two months' first merges insert every row, so a row that moved from one month to
-- the other between their reads would be stored twice. Created with its row in one statement:
-- processes creating it at once race on the table (one conflicts and retries), never on the row.
CREATE TABLE IF NOT EXISTS d23.last_merge AS
SELECT CAST(0 AS BIGINT)         AS merges,
       CAST(NULL AS VARCHAR)     AS _partition,
       CAST(NULL AS TIMESTAMPTZ) AS read_at;

-- The same for the outcome-mix tables: every rebuild updates this row (RECORD_MIX_REBUILD), so
-- that two rebuilds of a month that has no rows there yet do not both insert it.
CREATE TABLE IF NOT EXISTS d23.mix_rebuilds AS SELECT CAST(0 AS BIGINT) AS rebuilds;

CREATE TABLE IF NOT EXISTS d23.outcome_mix_monthly (
    month              DATE    NOT NULL,
    communication_type VARCHAR NOT NULL,
    interaction_source VARCHAR NOT NULL,
    outcome_option     VARCHAR NOT NULL,
    is_mapped          BOOLEAN NOT NULL,
    is_contact         BOOLEAN NOT NULL,
    is_rpc             BOOLEAN NOT NULL,
    is_promise         BOOLEAN NOT NULL,
    is_refusal         BOOLEAN NOT NULL,
    attempts           BIGINT  NOT NULL,
    broken_promises    BIGINT  NOT NULL
);

CREATE TABLE IF NOT EXISTS d23.outcome_kpis_monthly (
    month DATE NOT NULL,
    {_KPI_COLUMNS}
);

CREATE TABLE IF NOT EXISTS d23.outcome_mix_daily (
    day DATE NOT NULL,
    {_KPI_COLUMNS}
);

-- Months whose outcome-mix tables count rows a merge of another month changed (see
-- MIX_REBUILDS_DUE_FROM_ROWS): one row per month and table until that table's month is rebuilt.
CREATE TABLE IF NOT EXISTS d23.mix_rebuilds_due (
    month     DATE    NOT NULL,
    mix_table VARCHAR NOT NULL
);
"""

_DATA_COLUMNS = ", ".join(D23_FIELDS)

# Every merge's last write (see store.merge_snapshot): on DuckLake, of two merges open at once
# the one that commits second then always conflicts (both replaced this row) and runs again on
# the other's result, even when neither changed a row of d23.logs that the other did. On the
# DuckDB file, where merges take turns under the file lock, it only counts them.
RECORD_MERGE = """
UPDATE d23.last_merge SET merges = merges + 1, _partition = $partition, read_at = $read_at
"""

STAGE_UNIQUE_SNAPSHOT = """
CREATE OR REPLACE TEMP TABLE snapshot AS
SELECT
    public_id, communication_type, interaction_source, outcome_option, is_active, is_ptp_broken,
    CAST(communicated_at AS TIMESTAMPTZ) AS communicated_at,
    CAST(created_at AS TIMESTAMPTZ)      AS created_at,
    CAST(updated_at AS TIMESTAMPTZ)      AS updated_at
FROM read_parquet($files, filename = true, file_row_number = true)
"""
# The latest updated_at wins; an exact tie goes to the row read last (later slice file, later
# position), so the outcome never depends on hash order.
STAGE_SNAPSHOT = (
    STAGE_UNIQUE_SNAPSHOT
    + """QUALIFY row_number() OVER (
    PARTITION BY public_id
    ORDER BY CAST(updated_at AS TIMESTAMPTZ) DESC, filename DESC, file_row_number DESC
) = 1
"""
)

STAGE_REJECTS = """
CREATE OR REPLACE TEMP TABLE snapshot_rejects AS
SELECT slice_since, slice_until, public_id, reason, allowlisted_values
FROM read_parquet($files)
"""

# Versions of one public_id that a read served with the same updated_at but other values break
# the contract (updated_at moves when a row changes). STAGE_SNAPSHOT keeps the one read last; the
# others are quarantined with the reason, in the slice of their communicated_at, never dropped
# unseen. Run only when the read served some public_id twice.
_VERSION = "struct_pack(" + ", ".join(sorted(D23_FIELDS)) + ")"
QUARANTINE_CONFLICTING_VERSIONS = f"""
INSERT INTO snapshot_rejects
SELECT v.since, v.until, s.public_id,
       'served again by this read with the same updated_at and other values; the version read '
       || 'last is kept',
       to_json(s.version)
FROM (
    SELECT public_id, communicated_at, updated_at, {_VERSION} AS version,
           first_value({_VERSION}) OVER latest AS kept,
           row_number() OVER latest AS rank
    FROM read_parquet($files, filename = true, file_row_number = true)
    WHERE public_id IN (
        SELECT public_id FROM read_parquet($files) GROUP BY public_id HAVING count(*) > 1
    )
    WINDOW latest AS (
        PARTITION BY public_id
        ORDER BY CAST(updated_at AS TIMESTAMPTZ) DESC, filename DESC, file_row_number DESC
    )
) AS s
JOIN (SELECT unnest($since) AS since, unnest($until) AS until) AS v
  ON CAST(s.communicated_at AS TIMESTAMPTZ) >= v.since
 AND CAST(s.communicated_at AS TIMESTAMPTZ) < v.until
WHERE s.rank > 1 AND s.updated_at = s.kept.updated_at AND s.version <> s.kept
"""


class IdSet(NamedTuple):
    """The statements that cut a set of ids into ranges (store._id_ranges): its size and its first
    and last id, and quantiles of a sample of 10,000 of them ($fractions), as a sample of 100,000
    stayed in DuckDB's memory, 14 MB of it, through the merge of a 5M-row month."""

    span: str
    cuts: str


def _id_set(ids: str) -> IdSet:
    return IdSet(
        span=f"SELECT count(*), min(public_id), max(public_id) FROM {ids}",
        cuts=f"""
SELECT quantile_disc(public_id, $fractions)
FROM (SELECT public_id FROM {ids} USING SAMPLE reservoir(10000 ROWS) REPEATABLE (1))
""",
    )


# The snapshot is joined with d23.logs one range of public_id at a time: from $low, below
# $high (NULL in the last part) and up to $last, the snapshot's last id. The statements that
# join the two restrict both sides with _SNAPSHOT_PART and _LOGS_PART. The parts span the
# snapshot's ids from its first ($low of the first part) to its last, so that no part joins the
# rows of other months (ids are time-ordered, and DuckDB skips row groups outside a range; an
# empty snapshot has no first id, and nothing to join). A month of many rows is cut into
# several parts: a 5M-row month's whole join did not fit the warehouse's default memory limit
# (settings.DEFAULT_MEMORY_LIMIT), read again or read for the first time beside other months;
# its parts do (benchmarks/README.md).
SNAPSHOT_IDS = _id_set("snapshot")


def _in_part(alias: str) -> str:
    return (
        f"{alias}.public_id BETWEEN $low AND $last AND ({alias}.public_id < $high OR $high IS NULL)"
    )


_SNAPSHOT_PART = f"(SELECT * FROM snapshot AS s WHERE {_in_part('s')}) AS s"

_LOGS_PART = f"(SELECT * FROM d23.logs AS t WHERE {_in_part('t')}) AS t"

# Usually every public_id is read once; the dedupe of STAGE_SNAPSHOT (a sort per id) is then pure
# cost, and counting distinct ids first is several times cheaper. One range of the read's ids at
# a time (store.snapshot_has_duplicates): counted at once, 10M ids ran out of 48 MB.
SNAPSHOT_FILE_IDS = _id_set("(SELECT public_id FROM read_parquet($files))")
SNAPSHOT_HAS_DUPLICATES = f"""
SELECT count(*) <> count(DISTINCT public_id) FROM read_parquet($files) AS s WHERE {_in_part("s")}
"""

# A version at least as new as the stored one: a later updated_at, or the same one served by a
# read no older than the last that saw the stored row. The source may change a row without
# moving updated_at; the version read last is kept even when an older read is merged after a
# newer one (its month's d23/logs step run again on its own, another host's merge).
_NEWER = (
    "(s.updated_at > t.updated_at OR (s.updated_at = t.updated_at AND t._last_seen_at <= $read_at))"
)

# A row marked deleted comes back only when a read that finished after the one that proved it
# gone serves it again: a snapshot read earlier (its d23/logs step run again on its own) saw the
# row before it went, which is no evidence that it is back.
_SEEN_SINCE_DELETED = "t._deleted_at < $read_at"
# Or when this month's read takes it over (a version at least as new, communicated in this
# month): only another month's read proved it gone, from that month; none of this one has.
_TAKEN_OVER = f"({_NEWER} AND t._partition <> $partition)"

# Versions the MERGE does not take, counted so that someone hears of them: other values under an
# updated_at older than the stored version's, served by a read that began after every read that
# served the row had finished (it saw the source later; a resumed read began with its first
# slice). The source's updated_at went back (a restore, a writer's slow clock), and
# latest-updated_at-wins keeps the stored version.
_OTHER_VALUES = " OR ".join(
    f"s.{f} <> t.{f}" for f in D23_FIELDS if f not in ("public_id", "updated_at")
)
_OLDER_VERSION = (
    f"s.updated_at < t.updated_at AND t._last_seen_at < $started_at AND ({_OTHER_VALUES})"
)

OLDER_VERSION_EXAMPLES = f"""
SELECT s.public_id
FROM {_SNAPSHOT_PART} JOIN {_LOGS_PART} USING (public_id)
WHERE {_OLDER_VERSION}
ORDER BY s.public_id
LIMIT 5
"""

# What the merge is about to do, counted before it changes anything, with the MERGE's own
# conditions: "updated" counts rows whose updated_at moved forward (an exact tie is rewritten
# by the MERGE but changes nothing worth counting), "moved_in" rows the MERGE takes over from
# another month, "older_versions" those of _OLDER_VERSION.
MERGE_PREVIEW = f"""
SELECT
    count(*) FILTER (WHERE t.public_id IS NULL) AS inserted,
    count(*) FILTER (WHERE s.updated_at > t.updated_at) AS updated,
    count(*) FILTER (
        WHERE {_SEEN_SINCE_DELETED} OR (t._deleted_at IS NOT NULL AND {_TAKEN_OVER})
    ) AS restored,
    count(*) FILTER (WHERE {_TAKEN_OVER}) AS moved_in,
    count(*) FILTER (WHERE {_OLDER_VERSION}) AS older_versions
FROM {_SNAPSHOT_PART}
LEFT JOIN {_LOGS_PART} USING (public_id)
"""

# What a row new to d23.logs is stored as, by MERGE_SNAPSHOT and INSERT_NEW_SNAPSHOT.
_NEW_ROW_COLUMNS = f"{_DATA_COLUMNS}, _partition, _first_seen_at, _last_seen_at, _deleted_at"
_NEW_ROW_VALUES = (
    ", ".join(f"s.{name}" for name in D23_FIELDS) + ", $partition, $read_at, $read_at, NULL"
)

# One UPDATE action (DuckLake's MERGE allows no more): a matched row takes the snapshot's
# fields only when it is at least as new, and it is not deleted unless it was proven gone by a
# read that finished later than this one and it stays in its month. Either way the read saw it
# (_last_seen_at, below).
_MATCHED_CHANGES = [
    *(
        (name, f"CASE WHEN {_NEWER} THEN {new} ELSE t.{name} END")
        for name, new in [
            *((f, f"s.{f}") for f in D23_FIELDS if f != "public_id"),
            ("_partition", "$partition"),
        ]
    ),
    (
        "_deleted_at",
        f"CASE WHEN {_SEEN_SINCE_DELETED} OR {_TAKEN_OVER} THEN NULL ELSE t._deleted_at END",
    ),
]
# A read again serves most rows as stored, and for those the update would change only
# _last_seen_at. Rewriting every column of all of them took a 1M-row re-read's MERGE 5.8 s of
# CPU (1.6 s when a MERGE, not INSERT_NEW_SNAPSHOT, had written them), against 0.8 s for the
# rows that change and 0.3 s for that one column of the rest (SEEN_AS_ROW). So the MERGE takes
# only the rows that are new or change something else.
_CHANGES_MORE = "\n       OR ".join(
    f"t.{name} IS DISTINCT FROM ({new})" for name, new in _MATCHED_CHANGES
)
_SET_MATCHED_CHANGES = ",\n    ".join(f"{name:<18} = {new}" for name, new in _MATCHED_CHANGES)
MERGE_SNAPSHOT = f"""
MERGE INTO d23.logs AS t
USING (
    SELECT s.* FROM {_SNAPSHOT_PART} LEFT JOIN {_LOGS_PART} USING (public_id)
    WHERE t.public_id IS NULL OR {_CHANGES_MORE}
) AS s
ON t.public_id = s.public_id
WHEN MATCHED THEN UPDATE SET
    {_SET_MATCHED_CHANGES},
    _last_seen_at      = greatest(t._last_seen_at, $read_at)
WHEN NOT MATCHED THEN INSERT ({_NEW_ROW_COLUMNS})
VALUES ({_NEW_ROW_VALUES})
"""
# A read none of whose rows d23.logs holds, in any month (a month's first read, as a rule): the
# MERGE above would only insert. Without its join this takes about half its CPU and, below the
# memory limit, half its memory (200,000 rows: +30 MB against +65 MB; benchmarks/README.md).
INSERT_NEW_SNAPSHOT = f"""
INSERT INTO d23.logs ({_NEW_ROW_COLUMNS})
SELECT {_NEW_ROW_VALUES} FROM snapshot AS s
"""

# The months of rows this merge changes in another month: rows it takes over (their
# communicated_at moved into this month) and rows it brings back there, as valid rows or as
# rejects. Those months' outcome mix still counts them as they were; each outcome-mix asset
# rebuilds the months due for its table from d23.logs, whichever month it runs for, and so
# nothing is counted in two months. Two statements, each run only when the merge's preview (or
# its rejects) says it can find something: the first joins the snapshot with d23.logs, by parts.
MIX_TABLES = ("outcome_mix_monthly", "outcome_kpis_monthly", "outcome_mix_daily")
_RECORD_MIX_REBUILDS_DUE = """
INSERT INTO d23.mix_rebuilds_due
SELECT DISTINCT CAST(t._partition AS DATE), unnest($mix_tables)
FROM {source} JOIN {logs} USING (public_id)
WHERE t._partition <> $partition AND ({changed})
"""
MIX_REBUILDS_DUE_FROM_ROWS = _RECORD_MIX_REBUILDS_DUE.format(
    source=_SNAPSHOT_PART,
    logs=_LOGS_PART,
    changed=f"{_NEWER} OR {_SEEN_SINCE_DELETED}",
)
MIX_REBUILDS_DUE_FROM_REJECTS = _RECORD_MIX_REBUILDS_DUE.format(
    source="snapshot_rejects AS r", logs="d23.logs AS t", changed=_SEEN_SINCE_DELETED
)
# The merging month is due too when a row moved out of another: if its own outcome steps do not
# run (a blocking check failed), the next rebuild of the month the row left still counts it here.
MIX_REBUILDS_DUE_FOR_PARTITION = """
INSERT INTO d23.mix_rebuilds_due SELECT CAST($partition AS DATE), unnest($mix_tables)
"""
# A table's months due, except those still due for the table it is built from.
MIX_REBUILDS_DUE = """
SELECT DISTINCT month FROM d23.mix_rebuilds_due
WHERE mix_table = $mix_table
  AND month NOT IN (SELECT month FROM d23.mix_rebuilds_due WHERE mix_table = $built_from)
ORDER BY month
"""
# A month stays due for the KPIs while its mix is still due: KPIs built from a stale mix are stale.
MIX_REBUILD_DONE = """
DELETE FROM d23.mix_rebuilds_due
WHERE mix_table = $mix_table AND month = $month
  AND month NOT IN (SELECT month FROM d23.mix_rebuilds_due WHERE mix_table = $built_from)
"""
RECORD_MIX_REBUILD = "UPDATE d23.mix_rebuilds SET rebuilds = rebuilds + 1"

STAGE_ABSENT = """
CREATE OR REPLACE TEMP TABLE snapshot_absent AS
SELECT DISTINCT public_id FROM read_parquet($files)
"""
# Snapshots landed before reads were proven complete carry no absent.parquet: nothing to delete.
STAGE_NO_ABSENT = "CREATE OR REPLACE TEMP TABLE snapshot_absent (public_id VARCHAR)"
ANY_ABSENT = "SELECT EXISTS (SELECT 1 FROM snapshot_absent)"

# Absence is not evidence: a row of this month is marked deleted only when the read proved it
# gone (its slice verified and a read of its own instant no longer returning it, see
# ExportsClient.confirm_absent), this snapshot holds it neither as a row nor as a reject, no
# read that finished later has seen it (a snapshot merged again after newer reads), and no other
# month's reject of it is stored that this read did not find stale (moved there and broken on
# the way: no valid row takes it over, so it stays stored in this month; a reject merged after
# this read looked is evidence it could not weigh).
_PROVEN_DELETED = """
t._partition = $partition
  AND t._deleted_at IS NULL
  AND t._last_seen_at < $read_at
  AND EXISTS (SELECT 1 FROM snapshot_absent AS a WHERE a.public_id = t.public_id)
  AND NOT EXISTS (SELECT 1 FROM snapshot AS s WHERE s.public_id = t.public_id)
  AND NOT EXISTS (SELECT 1 FROM snapshot_rejects AS r WHERE r.public_id = t.public_id)
  AND NOT EXISTS (
      SELECT 1 FROM d23.rejected_rows AS o
      WHERE o.public_id = t.public_id AND o._partition <> $partition
        AND NOT EXISTS (
            SELECT 1 FROM snapshot_stale_rejects AS z
            WHERE z.public_id = o.public_id AND z._partition = o._partition
              AND z.rejected_at = o.rejected_at
        )
  )
"""
DELETIONS_PROVEN = f"SELECT count(*) FROM d23.logs AS t WHERE {_PROVEN_DELETED}"
MARK_DELETED = f"UPDATE d23.logs AS t SET _deleted_at = $read_at WHERE {_PROVEN_DELETED}"

# A row served only as a reject still exists at the source: one marked deleted (by its old
# month's read after it moved to this one, say) comes back with its last good version, as a
# rejected row of the month it was stored in keeps its own (see _PROVEN_DELETED).
ANY_IDENTIFIED_REJECT = "SELECT EXISTS (SELECT 1 FROM snapshot_rejects WHERE public_id IS NOT NULL)"
RESTORE_REJECTED = f"""
UPDATE d23.logs AS t
SET _deleted_at = NULL, _last_seen_at = greatest(t._last_seen_at, $read_at)
WHERE {_SEEN_SINCE_DELETED}
  AND EXISTS (SELECT 1 FROM snapshot_rejects AS r WHERE r.public_id = t.public_id)
"""

# A row served as a reject was seen by this read as surely as a valid row: an older read of
# its month, merged after this one (another host's, on DuckLake), must not prove it gone.
# A join, not EXISTS: 0.28 s against 0.79 s for the rows of a 1M-row re-read.
_SEEN_IN = """
UPDATE d23.logs AS t SET _last_seen_at = $read_at
FROM {served}
WHERE t.public_id = s.public_id AND t._last_seen_at < $read_at{in_part}
"""
SEEN_AS_REJECT = _SEEN_IN.format(served="snapshot_rejects AS s", in_part="")
# DuckDB's setting is global to its instance (store.join_sides_as_written).
KEEP_JOIN_SIDES = "SET disabled_optimizers = 'build_side_probe_side'"
RESET_JOIN_SIDES = "RESET disabled_optimizers"
# The rows MERGE_SNAPSHOT leaves out (those it took have theirs already).
SEEN_AS_ROW = _SEEN_IN.format(served=_SNAPSHOT_PART, in_part=f" AND {_in_part('t')}")

# The last time a read proved a row gone, of any month: one that moved into a slice read before
# then may be among them (see landing/month.py).
LAST_DELETION = "SELECT max(_deleted_at) FROM d23.logs"

# Bad rows a read served without a usable public_id: any of them may be a row that looks
# deleted, moved within the month and broken on the way (see landing/month.py).
ANONYMOUS_REJECTS = "SELECT count(*) FROM read_parquet($files) WHERE public_id IS NULL"

# Other months' rejects of rows this read proved gone from this month: each such row may live
# on there, moved and broken on the way, unless that month no longer serves it.
REJECTS_ELSEWHERE = """
SELECT DISTINCT public_id, _partition, slice_since, slice_until, rejected_at
FROM d23.rejected_rows
WHERE _partition <> $partition AND public_id IN (SELECT unnest($ids))
ORDER BY public_id, _partition
"""
# The rejects of REJECTS_ELSEWHERE the read found stale (their slice no longer serves them).
STAGE_STALE_REJECTS = """
CREATE OR REPLACE TEMP TABLE snapshot_stale_rejects AS
SELECT unnest(CAST($ids AS VARCHAR[])) AS public_id,
       unnest(CAST($partitions AS VARCHAR[])) AS _partition,
       unnest(CAST($rejected_at AS TIMESTAMPTZ[])) AS rejected_at
"""

# The month's live rows: none on its first read, when the candidates query below would still
# build its anti-join over every id the read landed (~75 MB for a 1M-row month); otherwise how
# many ranges of ids that query takes.
MONTH_LIVE_IDS = _id_set(
    "(SELECT public_id FROM d23.logs WHERE _partition = $partition AND _deleted_at IS NULL)"
)

# The rows a re-read must prove gone before they may be marked deleted: live rows of the month
# whose communicated_at lies in a verified slice and which the read (valid rows or rejects,
# anywhere in the month) did not return. ANTI JOINs, not NOT EXISTS: DuckDB decorrelates those
# into delim joins (the month's ids gathered, joined with the files, anti-joined back), which ran
# out of memory within 48 MB on a 5M-row month; one hash join per list of files fits it, in half
# the time (2.1 s against 4.2 s at 96 MB, benchmarks/README.md). One range of the month's ids at
# a time (store.deletion_candidates, with the merge's parts): a 10M-row month read again ran out
# of 48 MB in one.
DELETION_CANDIDATES = f"""
SELECT t.public_id, t.communicated_at
FROM {_LOGS_PART}
JOIN (SELECT unnest($verified_since) AS since, unnest($verified_until) AS until) AS v
  ON t.communicated_at >= v.since AND t.communicated_at < v.until
ANTI JOIN (SELECT public_id FROM read_parquet($files) AS s WHERE {_in_part("s")}) AS s
  ON s.public_id = t.public_id
ANTI JOIN (SELECT public_id FROM read_parquet($reject_files) AS r WHERE {_in_part("r")}) AS r
  ON r.public_id = t.public_id
WHERE t._partition = $partition
  AND t._deleted_at IS NULL
"""

MONTH_LAST_READ = "SELECT max(read_at) FROM d23.slice_verification WHERE _partition = $partition"
DELETE_SLICE_VERIFICATION = "DELETE FROM d23.slice_verification WHERE _partition = $partition"
# Live rows of the month in a verified slice that this read neither served nor weighed: seen
# last by a read of the month merged after this one took its deletion candidates (two runs of
# the month at once), too late for this read to prove them gone or there. Not deleted (absence
# is not evidence): listed as deletions not proven, for the month's next read to settle.
INSERT_NOT_WEIGHED_PENDING = """
INSERT INTO d23.deletions_pending
SELECT $partition, t.public_id, false, $reason, $read_at
FROM d23.logs AS t
WHERE t._partition = $partition
  AND t._deleted_at IS NULL
  AND t._last_seen_at > $weighed_until
  AND t._last_seen_at < $read_at
  AND EXISTS (
      SELECT 1
      FROM (SELECT unnest($verified_since) AS since, unnest($verified_until) AS until) AS v
      WHERE t.communicated_at >= v.since AND t.communicated_at < v.until
  )
  AND NOT EXISTS (
      SELECT 1 FROM d23.deletions_pending AS p
      WHERE p._partition = $partition AND p.public_id = t.public_id
  )
"""
INSERT_SLICE_VERIFICATION = """
INSERT INTO d23.slice_verification
SELECT $partition, unnest($since), unnest($until), unnest($served), unnest($total_before),
       unnest($total_after), unnest($verified), unnest($reads), $read_at
"""

DELETE_DELETIONS_PENDING = "DELETE FROM d23.deletions_pending WHERE _partition = $partition"
INSERT_UNPROVEN_PENDING = """
INSERT INTO d23.deletions_pending
SELECT $partition, public_id, false, 'not proven: ' || reason, $read_at FROM read_parquet($files)
"""
INSERT_HELD_PENDING = f"""
INSERT INTO d23.deletions_pending
SELECT $partition, t.public_id, true, $reason, $read_at FROM d23.logs AS t WHERE {_PROVEN_DELETED}
"""

# A read replaces the month's rejects, but a slice it could not prove complete may have missed
# some that are still broken at the source (absence is not evidence): the earlier rejects in such
# a slice stay, unless this read served the row again, valid or rejected alike.
_IN_UNVERIFIED_SLICE = """EXISTS (
          SELECT 1
          FROM (SELECT unnest($unverified_since) AS since, unnest($unverified_until) AS until) AS u
          WHERE {alias}.slice_since < u.until AND u.since < {alias}.slice_until
      )"""
DELETE_REJECTS = f"""
DELETE FROM d23.rejected_rows AS o
WHERE o._partition = $partition
  AND (
      NOT {_IN_UNVERIFIED_SLICE.format(alias="o")}
      OR EXISTS (SELECT 1 FROM snapshot AS s WHERE s.public_id = o.public_id)
      OR EXISTS (SELECT 1 FROM snapshot_rejects AS r WHERE r.public_id = o.public_id)
      -- A bad row without an id is only known by what it held: not by its reason, whose wording
      -- another version of this product may have changed, unless it held no contract field at
      -- all (a list, a string: '{{}}'), when the reason is all that tells it apart. Rows alike in
      -- that are told apart by their slice and their number: of the earlier copies in a slice,
      -- as many go as this read served in slices overlapping it, so that a read not proven
      -- complete that served one of two keeps the other, and a copy served in another slice
      -- takes none.
      OR o.rowid IN (
          SELECT e.rowid
          FROM (
              SELECT
                  rowid,
                  slice_since,
                  slice_until,
                  allowlisted_values,
                  reason,
                  row_number() OVER (
                      PARTITION BY slice_since, slice_until, allowlisted_values,
                                   CASE WHEN allowlisted_values = '{{}}' THEN reason END
                      ORDER BY rowid
                  ) AS copy
              FROM d23.rejected_rows AS e
              WHERE _partition = $partition
                AND public_id IS NULL
                AND {_IN_UNVERIFIED_SLICE.format(alias="e")}
          ) AS e
          WHERE e.copy <= (
              SELECT count(*)
              FROM snapshot_rejects AS r
              WHERE r.public_id IS NULL
                AND r.allowlisted_values = e.allowlisted_values
                AND (e.allowlisted_values <> '{{}}' OR r.reason = e.reason)
                AND r.slice_since < e.slice_until AND e.slice_since < r.slice_until
          )
      )
  )
"""
INSERT_REJECTS = """
INSERT INTO d23.rejected_rows
SELECT $partition, slice_since, slice_until, public_id, reason, allowlisted_values, $read_at
FROM snapshot_rejects
"""


# Live rows, as every other count shows them, and those kept marked deleted.
LOGS_ROW_COUNT = """
SELECT count(*) FILTER (WHERE _deleted_at IS NULL), count(*) FILTER (WHERE _deleted_at IS NOT NULL)
FROM d23.logs
"""
LOGS_PARTITION_ROW_COUNT = (
    "SELECT count(*) FROM d23.logs WHERE _partition = $partition AND _deleted_at IS NULL"
)
LOGS_PREVIEW = f"""
SELECT {_DATA_COLUMNS}
FROM d23.logs
WHERE _partition = $partition AND _deleted_at IS NULL
ORDER BY communicated_at, public_id
LIMIT $limit
"""

# The ids d23.logs holds more than once, one range of them at a time (store.duplicate_public_ids,
# with the merge's parts): DuckDB's GROUP BY public_id over a whole d23.logs of 8M rows ran out
# of the default 48 MB, after the merge had committed (6M fitted; in process, one thread).
LOGS_IDS = _id_set("d23.logs")
DUPLICATE_PUBLIC_IDS = f"""
SELECT public_id, count(*) AS copies
FROM d23.logs AS t
WHERE {_in_part("t")}
GROUP BY public_id
HAVING count(*) > 1
ORDER BY copies DESC, public_id
LIMIT 20
"""

# Every d23 table's columns, held against those CREATE_SCHEMA makes (store.check_schema).
D23_COLUMNS = """
SELECT table_name, column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'd23'
ORDER BY table_name, ordinal_position
"""

TABLE_COLUMNS = """
SELECT column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'd23' AND table_name = $table
ORDER BY ordinal_position
"""

# --- outcome mix -------------------------------------------------------------------------------

CREATE_OUTCOME_CLASSES = """
CREATE OR REPLACE TEMP TABLE outcome_classes (
    outcome_option VARCHAR PRIMARY KEY,
    is_contact     BOOLEAN NOT NULL,
    is_rpc         BOOLEAN NOT NULL,
    is_promise     BOOLEAN NOT NULL,
    is_refusal     BOOLEAN NOT NULL
)
"""
INSERT_OUTCOME_CLASSES = """
INSERT INTO outcome_classes
SELECT unnest($codes), unnest($is_contact), unnest($is_rpc), unnest($is_promise),
       unnest($is_refusal)
"""

# The classes of outcome_classes (c) a code joined with it falls in; none for a code not in it.
_CLASS_FLAGS = """
    c.outcome_option IS NOT NULL       AS is_mapped,
    coalesce(c.is_contact, false)      AS is_contact,
    coalesce(c.is_rpc, false)          AS is_rpc,
    coalesce(c.is_promise, false)      AS is_promise,
    coalesce(c.is_refusal, false)      AS is_refusal"""
# Attempts are the entries an analyst would count: active and still present at the source.
_ATTEMPTS_IN_WINDOW = """
WHERE l.is_active
  AND l._deleted_at IS NULL
  AND l.communicated_at >= $since
  AND l.communicated_at < $until"""
_CLASSIFIED_LOGS = f"""
SELECT
    l.communicated_at,
    l.communication_type,
    l.interaction_source,
    l.outcome_option,
    l.is_ptp_broken,{_CLASS_FLAGS}
FROM d23.logs AS l
LEFT JOIN outcome_classes AS c USING (outcome_option)
{_ATTEMPTS_IN_WINDOW}
"""

DELETE_OUTCOME_MIX_MONTHLY = (
    "DELETE FROM d23.outcome_mix_monthly WHERE month = CAST($month AS DATE)"
)
INSERT_OUTCOME_MIX_MONTHLY = f"""
INSERT INTO d23.outcome_mix_monthly
SELECT
    CAST($month AS DATE),
    communication_type, interaction_source, outcome_option,
    is_mapped, is_contact, is_rpc, is_promise, is_refusal,
    count(*)                                             AS attempts,
    count(*) FILTER (WHERE is_promise AND is_ptp_broken) AS broken_promises
FROM ({_CLASSIFIED_LOGS})
GROUP BY ALL
"""


def _kpi_select(key: str, source: str, group_by: str) -> str:
    """Counts and rates over rows shaped like outcome_mix_monthly (attempts, broken_promises and
    the class flags), so every rate is computed the same way for the monthly and the daily views."""
    return f"""
SELECT {key}, {", ".join(_KPI_COUNTS)},
    {_KPI_RATES}
FROM (
    SELECT {key},
        coalesce(sum(attempts), 0)                              AS attempts,
        coalesce(sum(attempts) FILTER (WHERE is_contact), 0)    AS contacts,
        coalesce(sum(attempts) FILTER (WHERE is_rpc), 0)        AS rpcs,
        coalesce(sum(attempts) FILTER (WHERE is_promise), 0)    AS promises,
        coalesce(sum(attempts) FILTER (WHERE is_refusal), 0)    AS refusals,
        coalesce(sum(broken_promises), 0)                       AS broken_promises,
        coalesce(sum(attempts) FILTER (WHERE NOT is_mapped), 0) AS unmapped_attempts
    FROM ({source})
    {group_by}
)
"""


DELETE_OUTCOME_KPIS_MONTHLY = (
    "DELETE FROM d23.outcome_kpis_monthly WHERE month = CAST($month AS DATE)"
)
# No GROUP BY: a month without attempts still gets its row of zeros.
INSERT_OUTCOME_KPIS_MONTHLY = "INSERT INTO d23.outcome_kpis_monthly " + _kpi_select(
    key="CAST($month AS DATE) AS month",
    source="SELECT * FROM d23.outcome_mix_monthly WHERE month = CAST($month AS DATE)",
    group_by="",
)

DELETE_OUTCOME_MIX_DAILY = """
DELETE FROM d23.outcome_mix_daily
WHERE day >= CAST(timezone('UTC', $since) AS DATE) AND day < CAST(timezone('UTC', $until) AS DATE)
"""
# Counted per UTC day and code before the codes are classed: a join per code, not per row, and
# UTC days from the epoch, not through ICU for each row (as MIX_BEHIND_LOGS counts them).
_OUTCOME_MIX_DAILY_FROM_LOGS = _kpi_select(
    key="day",
    source=f"""
        SELECT d.day,{_CLASS_FLAGS},
            d.attempts, CASE WHEN c.is_promise THEN d.broken ELSE 0 END AS broken_promises
        FROM (
            SELECT DATE '1970-01-01'
                       + CAST(fdiv(epoch_ms(l.communicated_at), 86400000) AS INTEGER) AS day,
                l.outcome_option,
                count(*)                                AS attempts,
                count(*) FILTER (WHERE l.is_ptp_broken) AS broken
            FROM d23.logs AS l
            {_ATTEMPTS_IN_WINDOW}
            GROUP BY ALL
        ) AS d
        LEFT JOIN outcome_classes AS c USING (outcome_option)""",
    group_by="GROUP BY day",
)
INSERT_OUTCOME_MIX_DAILY = "INSERT INTO d23.outcome_mix_daily " + _OUTCOME_MIX_DAILY_FROM_LOGS

# Months between $since and $until whose daily table counts otherwise than its rebuild now
# would, with the mapping loaded now (outcome_classes): built with an earlier mapping (its
# asset is not downstream of the monthly mix that a mapping change has rebuilt), or before a
# merge changed a row's code or broken flag on a day whose attempts stayed the same.
DAILY_COUNTED_OTHERWISE = f"""
SELECT DISTINCT CAST(date_trunc('month', day) AS DATE) AS month
FROM (
    SELECT day, {", ".join(_KPI_COUNTS)} FROM d23.outcome_mix_daily
    WHERE day >= CAST(timezone('UTC', $since) AS DATE)
      AND day < CAST(timezone('UTC', $until) AS DATE)
    EXCEPT
    SELECT day, {", ".join(_KPI_COUNTS)} FROM ({_OUTCOME_MIX_DAILY_FROM_LOGS})
)
ORDER BY month
"""

OUTCOME_MIX_FOR_MONTH = """
SELECT communication_type, interaction_source, outcome_option, attempts, broken_promises
FROM d23.outcome_mix_monthly
WHERE month = CAST($month AS DATE)
ORDER BY attempts DESC, communication_type, interaction_source, outcome_option
"""
# The class a code counts as, named by its most specific flag (a promise is also an RPC and a
# contact); the same mapping gives every row of a code the same flags.
_OUTCOME_CLASS = """CASE
    WHEN NOT is_mapped THEN 'unmapped'
    WHEN is_promise THEN 'promise'
    WHEN is_refusal THEN 'refusal'
    WHEN is_rpc THEN 'right_party_contact'
    WHEN is_contact THEN 'contact'
    ELSE 'no_contact'
END"""
OUTCOME_MIX_BY_OUTCOME = f"""
SELECT outcome_option, {_OUTCOME_CLASS} AS outcome_class, sum(attempts) AS attempts
FROM d23.outcome_mix_monthly
WHERE month = CAST($month AS DATE)
GROUP BY ALL
ORDER BY attempts DESC, outcome_option
"""
OUTCOME_KPIS_FOR_MONTH = "SELECT * FROM d23.outcome_kpis_monthly WHERE month = CAST($month AS DATE)"
OUTCOME_MIX_DAILY_FOR_WINDOW = """
SELECT * FROM d23.outcome_mix_daily
WHERE day >= CAST($since AS DATE) AND day < CAST($until AS DATE)
ORDER BY day
"""
UNMAPPED_OUTCOMES = """
SELECT outcome_option, sum(attempts) AS attempts
FROM d23.outcome_mix_monthly
WHERE month = CAST($month AS DATE) AND NOT is_mapped
GROUP BY outcome_option
ORDER BY attempts DESC, outcome_option
"""
# The attempts the outcome mix counts, flagged broken under a code not classed as a promise:
# the broken-promise share leaves them out (needs the session's outcome_classes).
BROKEN_FLAGS_OUTSIDE_PROMISES = f"""
SELECT outcome_option, count(*) AS attempts
FROM ({_CLASSIFIED_LOGS})
WHERE is_ptp_broken AND NOT is_promise
GROUP BY outcome_option
ORDER BY attempts DESC, outcome_option
"""

# --- KPI checks --------------------------------------------------------------------------------


def _rates_out_of_range(key: str, rows: str) -> str:
    """The KPIs of ``rows`` (shaped like the KPI tables) outside [0, 1]: a numerator that
    counted rows its denominator did not."""
    return f"""
SELECT {key}, name, rate
FROM (
    UNPIVOT ({rows})
    ON {", ".join(KPI_NAMES)}
    INTO NAME name VALUE rate
)
WHERE rate < 0 OR rate > 1
ORDER BY ALL
"""


KPI_RATES_OUT_OF_RANGE = _rates_out_of_range(
    "month", "SELECT * FROM d23.outcome_kpis_monthly WHERE month = CAST($month AS DATE)"
)
DAILY_RATES_OUT_OF_RANGE = _rates_out_of_range(
    "day",
    "SELECT * FROM d23.outcome_mix_daily "
    "WHERE day >= CAST($since AS DATE) AND day < CAST($until AS DATE)",
)
KPI_ATTEMPTS_AND_MIX_ATTEMPTS = """
SELECT
    (SELECT sum(attempts) FROM d23.outcome_kpis_monthly WHERE month = CAST($month AS DATE)),
    (SELECT coalesce(sum(attempts), 0) FROM d23.outcome_mix_monthly
     WHERE month = CAST($month AS DATE)),
    EXISTS (SELECT 1 FROM d23.mix_rebuilds_due
            WHERE month = CAST($month AS DATE) AND mix_table = 'outcome_kpis_monthly')
"""

# --- dashboard and notebooks -------------------------------------------------------------------

OUTCOME_KPIS_ALL = "SELECT * FROM d23.outcome_kpis_monthly ORDER BY month"
# Months whose stored KPIs are not what their stored outcome mix gives: the mix was rebuilt (with
# another mapping, after a merge) and the month's KPIs, which the tiles and the trend show, not;
# or the month has a mix and no KPIs yet (its KPI step failed or was stopped).
_KPIS_FROM_MIX = _kpi_select(
    key="month", source="SELECT * FROM d23.outcome_mix_monthly", group_by="GROUP BY month"
)
KPIS_BEHIND_MIX = f"""
SELECT month
FROM d23.outcome_kpis_monthly AS k
FULL JOIN ({_KPIS_FROM_MIX}) AS m USING (month)
WHERE {" OR ".join(f"coalesce(k.{c}, 0) <> coalesce(m.{c}, 0)" for c in _KPI_COUNTS)}
ORDER BY month
"""
# Months read or built whose outcome mix does not count d23.logs as it is: a merge changed their
# rows and their outcome steps have not run since (a blocking check stopped the run, a step
# failed, a merge of another month moved rows), or never ran (the month's first run stopped so).
# Attempts per code and channel, and broken promises of the codes the mix counts as promises,
# whatever the mapping; and the daily table's attempts per UTC day.
MIX_BEHIND_LOGS = """
WITH by_day AS (
    -- UTC days first, counted from the epoch: DuckDB's month of a TIMESTAMPTZ goes through ICU
    -- for each row, most of this query's time.
    SELECT CAST(fdiv(epoch_ms(communicated_at), 86400000) AS BIGINT) AS day,
        communication_type, interaction_source, outcome_option,
        count(*)                              AS attempts,
        count(*) FILTER (WHERE is_ptp_broken) AS broken
    FROM d23.logs
    WHERE is_active AND _deleted_at IS NULL
    GROUP BY ALL
), live AS (
    SELECT CAST(date_trunc('month', make_timestamptz(day * 86400000000)) AS DATE) AS month,
        communication_type, interaction_source, outcome_option,
        sum(attempts) AS attempts,
        sum(broken)   AS broken
    FROM by_day
    GROUP BY ALL
), live_days AS (
    SELECT DATE '1970-01-01' + CAST(day AS INTEGER) AS day, sum(attempts) AS attempts
    FROM by_day
    GROUP BY ALL
), behind AS (
    SELECT coalesce(m.month, l.month) AS month
    FROM d23.outcome_mix_monthly AS m
    FULL JOIN live AS l
        ON  m.month = l.month
        AND m.communication_type = l.communication_type
        AND m.interaction_source = l.interaction_source
        AND m.outcome_option = l.outcome_option
    WHERE coalesce(m.attempts, 0) <> coalesce(l.attempts, 0)
       OR (m.is_promise AND m.broken_promises <> l.broken)
    -- The daily table too: rows moved between days of one month leave the month's mix as it was.
    UNION ALL
    SELECT CAST(date_trunc('month', coalesce(d.day, l.day)) AS DATE)
    FROM d23.outcome_mix_daily AS d
    FULL JOIN live_days AS l USING (day)
    WHERE coalesce(d.attempts, 0) <> coalesce(l.attempts, 0)
)
SELECT DISTINCT month
FROM behind
WHERE month IN (
    SELECT month FROM d23.outcome_kpis_monthly
    UNION SELECT DISTINCT CAST(_partition AS DATE) FROM d23.logs
)
ORDER BY month
"""
OUTCOME_MIX_ALL = """
SELECT * FROM d23.outcome_mix_monthly
ORDER BY month, communication_type, interaction_source, outcome_option
"""
OUTCOME_MIX_DAILY_ALL = "SELECT * FROM d23.outcome_mix_daily ORDER BY day"

OUTCOME_KPIS_BY_CHANNEL = (
    _kpi_select(
        key="month, communication_type",
        source="SELECT * FROM d23.outcome_mix_monthly",
        group_by="GROUP BY month, communication_type",
    )
    + "ORDER BY month, communication_type"
)
OUTCOME_KPIS_BY_SOURCE = (
    _kpi_select(
        key="month, interaction_source",
        source="SELECT * FROM d23.outcome_mix_monthly",
        group_by="GROUP BY month, interaction_source",
    )
    + "ORDER BY month, interaction_source"
)
OUTCOME_SHARES_BY_MONTH = f"""
SELECT month, outcome_option, {_OUTCOME_CLASS} AS outcome_class, sum(attempts) AS attempts,
    sum(attempts) / sum(sum(attempts)) OVER (PARTITION BY month) AS share
FROM d23.outcome_mix_monthly
GROUP BY month, outcome_option, outcome_class
ORDER BY month, outcome_class, outcome_option
"""

# The lender's time zone's UTC offsets over the dashboard's window (needed by
# ATTEMPTS_BY_LOCAL_TIME), one row per span of one offset, tiling the window, as Python's
# zoneinfo gives them (dashboard.utc_offset_spans): the IANA database the rest of the page uses.
# DuckDB's own conversion (ICU) places a few zones' changes elsewhere: Europe/Chisinau's an hour
# late in 2026, so an hour of attempts went to the wrong local hour twice a year.
CREATE_LOCAL_OFFSETS = """
CREATE OR REPLACE TEMP TABLE local_offsets (
    utc_from  TIMESTAMPTZ NOT NULL,
    utc_until TIMESTAMPTZ NOT NULL,
    offset_s  BIGINT      NOT NULL
)
"""
INSERT_LOCAL_OFFSET = "INSERT INTO local_offsets VALUES ($utc_from, $utc_until, $offset_s)"
# The window's attempts (see _CLASSIFIED_LOGS) in the lender's wall-clock time, with their
# contacts, right-party contacts and promises, as the session's temp table
# attempts_by_local_time: per local day, channel and source (the daily channel panel; weekday
# and hour NULL) and per ISO weekday (1 = Monday) and hour (the weekday-hour panel; day, channel
# and source NULL). Each row takes its span's offset (local_offsets tiles the window the rows
# are taken from, so each row is in one span): arithmetic, where ICU's conversion per row was
# most of the dashboard's CPU.
ATTEMPTS_BY_LOCAL_TIME = f"""
CREATE OR REPLACE TEMP TABLE attempts_by_local_time AS
WITH placed_rows AS (
    SELECT
        date_trunc('hour', make_timestamp(epoch_us(l.communicated_at) + o.offset_s * 1000000))
            AS local_hour,
        l.communication_type, l.interaction_source, l.is_contact, l.is_rpc, l.is_promise
    FROM ({_CLASSIFIED_LOGS}) AS l
    JOIN local_offsets AS o
      ON l.communicated_at >= o.utc_from AND l.communicated_at < o.utc_until
)
SELECT
    CAST(local_hour AS DATE)           AS day,
    communication_type,
    interaction_source,
    isodow(local_hour)                 AS weekday,
    hour(local_hour)                   AS hour,
    count(*)                           AS attempts,
    count(*) FILTER (WHERE is_contact) AS contacts,
    count(*) FILTER (WHERE is_rpc)     AS rpcs,
    count(*) FILTER (WHERE is_promise) AS promises
FROM placed_rows
GROUP BY GROUPING SETS ((day, communication_type, interaction_source), (weekday, hour))
"""
CONTACT_BY_WEEKDAY_HOUR = """
SELECT weekday, hour, attempts, contacts, rpcs
FROM attempts_by_local_time
WHERE weekday IS NOT NULL
ORDER BY weekday, hour
"""
# Every local day in $days for every channel seen in the window, 0 on a day without attempts: a
# line drawn through only the days that have some would join their neighbours across the gap
# (needs attempts_by_local_time).
CHANNEL_DAILY = """
WITH counted AS (
    SELECT day, communication_type, interaction_source, attempts, contacts, rpcs, promises
    FROM attempts_by_local_time
    WHERE day IS NOT NULL
), days AS (
    SELECT CAST(unnest($days) AS DATE) AS day
), channels AS (
    SELECT DISTINCT communication_type, interaction_source FROM counted
)
SELECT
    day,
    communication_type,
    interaction_source,
    coalesce(attempts, 0) AS attempts,
    coalesce(contacts, 0) AS contacts,
    coalesce(rpcs, 0)     AS rpcs,
    coalesce(promises, 0) AS promises
FROM days CROSS JOIN channels
LEFT JOIN counted USING (day, communication_type, interaction_source)
ORDER BY day, communication_type, interaction_source
"""

# Codes each month's stored outcome mix classes otherwise than the mapping loaded now
# (outcome_classes): months counted with an earlier mapping, not rebuilt since it changed.
OTHER_MAPPING_CODES = """
SELECT DISTINCT m.month, m.outcome_option
FROM d23.outcome_mix_monthly AS m
LEFT JOIN outcome_classes AS c USING (outcome_option)
WHERE m.is_mapped <> (c.outcome_option IS NOT NULL)
   OR m.is_contact <> coalesce(c.is_contact, false)
   OR m.is_rpc <> coalesce(c.is_rpc, false)
   OR m.is_promise <> coalesce(c.is_promise, false)
   OR m.is_refusal <> coalesce(c.is_refusal, false)
ORDER BY m.month, m.outcome_option
"""

# When each month was last read, by its last merged read's slice proofs: a month read with no
# rows left has none in d23.logs to carry the time (_last_seen_at is the fallback).
MONTHS_LAST_READ = """
WITH stored AS (
    SELECT _partition,
        count(*) FILTER (WHERE _deleted_at IS NULL) AS rows,
        max(_last_seen_at)                          AS last_seen
    FROM d23.logs
    GROUP BY _partition
), reads AS (
    SELECT _partition, max(read_at) AS read_at FROM d23.slice_verification GROUP BY _partition
)
SELECT _partition AS partition,
    coalesce(stored.rows, 0)                  AS rows,
    coalesce(reads.read_at, stored.last_seen) AS last_read
FROM stored FULL OUTER JOIN reads USING (_partition)
ORDER BY _partition
"""
REJECTED_ROWS_BY_MONTH = """
SELECT _partition AS partition, reason, count(*) AS rows
FROM d23.rejected_rows
GROUP BY ALL
ORDER BY partition, rows DESC, reason
"""
UNMAPPED_CODES_ALL = """
SELECT month, outcome_option, sum(attempts) AS attempts
FROM d23.outcome_mix_monthly
WHERE NOT is_mapped
GROUP BY ALL
ORDER BY month, attempts DESC, outcome_option
"""
DELETIONS_PENDING_ALL = """
SELECT p._partition AS partition, p.reason, count(*) AS rows,
    count(*) FILTER (WHERE l.is_active) AS attempts, max(p.read_at) AS read_at
FROM d23.deletions_pending AS p
JOIN d23.logs AS l
  ON l.public_id = p.public_id AND l._partition = p._partition AND l._deleted_at IS NULL
GROUP BY ALL
ORDER BY partition, reason
"""
UNVERIFIED_SLICES = """
SELECT _partition AS partition, slice_since, slice_until, served, total_before, total_after,
    reads, read_at
FROM d23.slice_verification
WHERE NOT verified
ORDER BY partition, slice_since
"""

LANDING_HOME = "SELECT data_dir_id, raw_dir, host, claimed_at FROM d23.landing_home"
FORGET_LANDING_HOME = "DELETE FROM d23.landing_home"
CLAIM_LANDING_HOME = (
    "INSERT INTO d23.landing_home VALUES ($data_dir_id, $raw_dir, $host, current_timestamp)"
)
