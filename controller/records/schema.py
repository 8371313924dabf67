"""The records database's tables, as migrations: MIGRATIONS[n] takes schema version n to n + 1.

Append a step, never edit one: databases in the field were made by the earlier steps.
Step 1: sessions, events, telemetry and the audit trail; step 2: the clinic's devices, bookings
and calibrations; step 3: row hashes in the audit chain, profile hashes, device-reported elapsed
time, and what a device is (model, serial, resolved port, pinned profile file); step 4: the
clinic service's user accounts; step 5: clinical notes on sessions; step 6: the rooms sharing a
database (`rooms`, `devices.room`), the spool's replay ledger, and `audit_high` in place of
SQLite's own sequence table, so both backends read the chain's highest id with one query.

PostgreSQL's tables are `controller.records.pg_schema.PG_MIGRATIONS`, numbered the same.
"""

from __future__ import annotations

from controller.records.pg_schema import ROOM_TABLES

SESSION_TABLES: tuple[str, ...] = (
    """CREATE TABLE sessions (
            id TEXT PRIMARY KEY, profile TEXT NOT NULL, port TEXT NOT NULL,
            identity TEXT NOT NULL, operator TEXT NOT NULL, patient TEXT,
            prescription TEXT NOT NULL, planned_s REAL NOT NULL, started_at TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'closed', 'interrupted')),
            outcome TEXT, reason TEXT, stop_source TEXT, delivered_s REAL, dose TEXT,
            ended_at TEXT, owner TEXT)""",
    "CREATE INDEX sessions_patient ON sessions (patient, started_at)",
    "CREATE INDEX sessions_status ON sessions (status)",
    """CREATE TABLE events (
            session_id TEXT NOT NULL REFERENCES sessions (id), seq INTEGER NOT NULL,
            t_s REAL NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
            delivered_s REAL, dose TEXT, PRIMARY KEY (session_id, seq)) WITHOUT ROWID""",
    """CREATE TABLE samples (
            session_id TEXT NOT NULL REFERENCES sessions (id), t_s REAL NOT NULL,
            data TEXT NOT NULL, delivered_s REAL, dose TEXT)""",
    "CREATE INDEX samples_session ON samples (session_id, t_s)",
    # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence: a deleted tail shows.
    """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
)

# Nothing here is ever deleted: devices are marked removed, bookings cancelled, calibrations
# are append-only like the audit trail.
CLINIC_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE devices (
        name TEXT PRIMARY KEY, profile TEXT NOT NULL, port TEXT NOT NULL, serial TEXT,
        registered_by TEXT NOT NULL, registered_at TEXT NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0, removed_by TEXT, removed_at TEXT)""",
    """CREATE TRIGGER devices_no_delete BEFORE DELETE ON devices
        BEGIN SELECT RAISE(ABORT, 'devices are never deleted: mark them removed'); END""",
    # A booking holds one device (a session) or every device of a plan, for its whole window.
    """CREATE TABLE bookings (
        id INTEGER PRIMARY KEY AUTOINCREMENT, profile TEXT, plan TEXT, settings TEXT NOT NULL,
        modalities TEXT NOT NULL, patient TEXT NOT NULL, starts_at TEXT NOT NULL,
        ends_at TEXT NOT NULL, duration_s REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled', 'started', 'done')),
        created_by TEXT NOT NULL, created_at TEXT NOT NULL, cancelled_by TEXT,
        cancel_reason TEXT, session_ids TEXT NOT NULL DEFAULT '[]',
        CHECK ((profile IS NULL) <> (plan IS NULL)))""",
    "CREATE INDEX bookings_start ON bookings (starts_at)",
    "CREATE INDEX bookings_patient ON bookings (patient, starts_at)",
    """CREATE TABLE booking_devices (
        booking_id INTEGER NOT NULL REFERENCES bookings (id), position INTEGER NOT NULL,
        role TEXT NOT NULL, device TEXT NOT NULL REFERENCES devices (name),
        PRIMARY KEY (booking_id, position))""",
    "CREATE INDEX booking_devices_device ON booking_devices (device)",
    """CREATE TRIGGER bookings_no_delete BEFORE DELETE ON bookings
        BEGIN SELECT RAISE(ABORT, 'bookings are never deleted: cancel them'); END""",
    """CREATE TRIGGER booking_devices_no_change BEFORE UPDATE ON booking_devices
        BEGIN SELECT RAISE(ABORT, 'the devices of a booking never change'); END""",
    """CREATE TABLE calibrations (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, profile TEXT NOT NULL,
        technician TEXT NOT NULL, instrument TEXT NOT NULL, instrument_id TEXT NOT NULL,
        before TEXT NOT NULL, after TEXT NOT NULL, passed INTEGER NOT NULL,
        performed_at TEXT NOT NULL, next_due TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
    "CREATE INDEX calibrations_device ON calibrations (device, performed_at)",
    """CREATE TRIGGER calibrations_no_update BEFORE UPDATE ON calibrations
        BEGIN SELECT RAISE(ABORT, 'calibration records are append-only'); END""",
    """CREATE TRIGGER calibrations_no_delete BEFORE DELETE ON calibrations
        BEGIN SELECT RAISE(ABORT, 'calibration records are append-only'); END""",
)

# Part of step 3: what a device is (model, serial read at identification, the resolved port)
# and which profile file it was registered with; which profile files a booking was made with.
CLINIC_IDENTITY_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE devices ADD COLUMN model TEXT",
    "ALTER TABLE devices ADD COLUMN profile_path TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE devices ADD COLUMN profile_sha256 TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE devices ADD COLUMN port_real TEXT",
    "CREATE INDEX devices_identity ON devices (model, serial)",
    "CREATE INDEX devices_port_real ON devices (port_real)",
    "ALTER TABLE bookings ADD COLUMN profiles TEXT NOT NULL DEFAULT '{}'",
)

# Step 4: the clinic service's accounts (`controller.records.user_table`). Names compare without
# case, so "Alice" cannot sit beside "alice"; an account is disabled, never deleted, because the
# audit trail names it.
USERS_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE users (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        role TEXT NOT NULL CHECK (role IN ('clinician', 'technician', 'admin')),
        password_hash TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL, created_at TEXT NOT NULL,
        changed_by TEXT NOT NULL, changed_at TEXT NOT NULL)""",
    """CREATE TRIGGER users_no_delete BEFORE DELETE ON users
        BEGIN SELECT RAISE(ABORT, 'accounts are never deleted: disable them'); END""",
)

# Step 5: a clinician's notes on a session (`controller.records.notes_table`): body site, skin
# check before and after, pain score before and after (0-10), free text. Append-only like the
# calibrations: a correction is a new note, and the report shows them all in order.
NOTES_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE session_notes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions (id), body_site TEXT,
        skin_before TEXT, skin_after TEXT,
        pain_before INTEGER CHECK (pain_before BETWEEN 0 AND 10),
        pain_after INTEGER CHECK (pain_after BETWEEN 0 AND 10),
        text TEXT NOT NULL DEFAULT '', actor TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
    "CREATE INDEX session_notes_session ON session_notes (session_id, id)",
    """CREATE TRIGGER session_notes_no_update BEFORE UPDATE ON session_notes
        BEGIN SELECT RAISE(ABORT, 'clinical notes are append-only: add a new note'); END""",
    """CREATE TRIGGER session_notes_no_delete BEFORE DELETE ON session_notes
        BEGIN SELECT RAISE(ABORT, 'clinical notes are append-only: add a new note'); END""",
)

# Step 6: several rooms on one database (docs/design.md §6.4). `audit_high` starts from what
# SQLite's AUTOINCREMENT remembered, and a trigger raises it on every append.
ROOMS_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE devices ADD COLUMN room TEXT",
    "CREATE TABLE audit_high (seq INTEGER NOT NULL)",
    """INSERT INTO audit_high SELECT COALESCE(
        (SELECT seq FROM sqlite_sequence WHERE name = 'audit'), 0)""",
    """CREATE TRIGGER audit_high_bump AFTER INSERT ON audit
        BEGIN UPDATE audit_high SET seq = MAX(seq, NEW.id); END""",
    """CREATE TRIGGER audit_high_no_lower BEFORE UPDATE ON audit_high WHEN NEW.seq < OLD.seq
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER audit_high_no_delete BEFORE DELETE ON audit_high
        BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    *ROOM_TABLES,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    SESSION_TABLES,
    CLINIC_MIGRATION,
    (  # 3: row hashes in the audit chain; profile hashes; device-reported elapsed time
        "ALTER TABLE sessions ADD COLUMN profile_path TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sessions ADD COLUMN profile_sha256 TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sessions ADD COLUMN device_elapsed_s REAL",
        # The audit entry that covers a telemetry row (NULL: written before schema 3).
        "ALTER TABLE samples ADD COLUMN batch INTEGER",
        "CREATE INDEX samples_batch ON samples (batch)",
        *CLINIC_IDENTITY_MIGRATION,
    ),
    USERS_MIGRATION,
    NOTES_MIGRATION,
    ROOMS_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)
