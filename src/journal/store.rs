//! The journal file: a redb database holding a schema header, a snapshot of the folded state and
//! the events appended after it. Every append is one durable transaction.
//!
//! Opening never modifies a journal it refuses: the header is checked read-only (on a scratch copy
//! when the file needs crash recovery first), and only a journal of our own schema is opened for
//! writing.

use std::io::Read;
use std::path::{Path, PathBuf};

/// redb's page cache. Its default (1 GiB) lets every page written stay in memory, so the
/// daemon's RSS grew with the file; the journal is read whole only at start (replay) and
/// appended to after, which needs few cached pages.
const CACHE_BYTES: usize = 1 << 20;

use redb::{
    Database, DatabaseError, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};

use super::codec::schema1;
use super::event::{Event, State};

/// Schema version this build writes (and reads). Schema 1 (CRI messages as k8s-cri serde JSON)
/// is read too, and migrated to this one at open ([`super::codec::schema1`]).
pub const SCHEMA_VERSION: u64 = 2;
/// The oldest schema this build migrates.
const SCHEMA_V1: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_SCHEMA: &str = "schema_version";
const KEY_SNAPSHOT_SEQ: &str = "snapshot_seq";
const KEY_STATE: &str = "state";
/// Meta key written by a probe after a write failure (its value: the time, unused).
const KEY_PROBE: &str = "write_probe";

/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Why the journal cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file is not a readable concord journal.
    #[error(
        "journal {path} is corrupt ({detail}); refusing to start, the file was left untouched"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The journal was written by a newer concord.
    #[error(
        "journal {path} has schema version {found}, newer than this concord supports ({supported}); \
         refusing to start, the file was left untouched (run the newer concord, or move the file away)"
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The journal has a schema version this concord does not know.
    #[error("journal {path} has unknown schema version {found}; refusing to start, the file was left untouched")]
    UnknownSchema { path: PathBuf, found: u64 },
    /// Another process holds the journal open.
    #[error("journal {path} is in use by another process (is another concord running with this state dir?)")]
    InUse { path: PathBuf },
    /// The state directory or file could not be accessed.
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store failed to read or commit.
    #[error("journal {path}: store error: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    /// The journal takes no writes now (it failed one and could not be reopened or probed).
    #[error("journal {path} takes no writes: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    /// An event could not be encoded.
    #[error("journal: cannot encode event: {0}")]
    Encode(#[source] serde_json::Error),
}

/// What opening the journal found.
#[derive(Debug, Clone, Default)]
pub struct OpenInfo {
    /// Events folded on top of the snapshot.
    pub replayed: u64,
    /// Sequence number the snapshot covered.
    pub snapshot_seq: u64,
    /// The file was created by this open.
    pub created: bool,
}

/// An open journal. Owned by the writer task; all calls block (run them off the async runtime).
pub struct Journal {
    path: PathBuf,
    db: Database,
    last_seq: u64,
    snapshot_seq: u64,
    events_since_snapshot: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and folds it into a [`State`]. A journal in use
    /// is waited for a moment: the lock of a predecessor that was just killed can outlive it
    /// briefly (a child it was forking holds the descriptor until its exec).
    pub fn open(path: &Path) -> Result<(Journal, State, OpenInfo), JournalError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match Self::open_once(path) {
                Err(JournalError::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<(Journal, State, OpenInfo), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
            // The journal holds pod specs with env values that may come from Secrets: the state
            // dir and the file are root's alone (also for journals made before this was so).
            restrict(dir, 0o700).map_err(io)?;
        }
        if !path.exists() {
            let opened = Self::create(path)?;
            restrict(path, 0o600).map_err(io)?;
            return Ok(opened);
        }
        restrict(path, 0o600).map_err(io)?;
        // redb panics on some kinds of damage instead of answering an error: a panic while
        // reading is a corrupt journal too.
        let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_only(path, |db| fold(path, db))
        }))
        .unwrap_or_else(|panic| {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the store could not read it".into());
            std::fs::remove_file(path.with_extension("redb.check")).ok();
            Err(JournalError::Corrupt {
                path: path.to_owned(),
                detail,
            })
        })?;
        let folded = match folded.version {
            SCHEMA_V1 => migrate(path, folded)?,
            _ => folded,
        };
        let db = Database::open(path).map_err(|e| open_error(path, e))?;
        let journal = Journal {
            path: path.to_owned(),
            db,
            last_seq: folded.last_seq,
            snapshot_seq: folded.snapshot_seq,
            events_since_snapshot: folded.replayed,
        };
        let info = OpenInfo {
            replayed: folded.replayed,
            snapshot_seq: folded.snapshot_seq,
            created: false,
        };
        Ok((journal, folded.state, info))
    }

    fn create(path: &Path) -> Result<(Journal, State, OpenInfo), JournalError> {
        // Made 0600 from the start (redb creates with the umask's mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| JournalError::Io {
                    path: path.to_owned(),
                    source,
                })?;
        }
        let store = |source: redb::Error| JournalError::Store {
            path: path.to_owned(),
            source,
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let txn = db.begin_write().map_err(|e| store(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| store(e.into()))?;
            meta.insert(KEY_SCHEMA, SCHEMA_VERSION)
                .map_err(|e| store(e.into()))?;
            meta.insert(KEY_SNAPSHOT_SEQ, 0)
                .map_err(|e| store(e.into()))?;
            txn.open_table(EVENTS).map_err(|e| store(e.into()))?;
            txn.open_table(SNAPSHOT).map_err(|e| store(e.into()))?;
        }
        txn.commit().map_err(|e| store(e.into()))?;
        let journal = Journal {
            path: path.to_owned(),
            db,
            last_seq: 0,
            snapshot_seq: 0,
            events_since_snapshot: 0,
        };
        let info = OpenInfo {
            created: true,
            ..OpenInfo::default()
        };
        Ok((journal, State::default(), info))
    }

    /// Appends events in one transaction, durable or not (see [`Durability::None`]: made durable
    /// by the next durable commit); answers the sequence number of the last one.
    pub fn append(&mut self, events: &[Event], durable: bool) -> Result<u64, JournalError> {
        let encoded = events
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(JournalError::Encode)?;
        let mut seq = self.last_seq;
        let durability = match durable {
            true => Durability::Immediate,
            false => Durability::None,
        };
        self.write(durability, |txn| {
            let mut t = txn.open_table(EVENTS)?;
            for bytes in &encoded {
                seq += 1;
                t.insert(seq, bytes.as_slice())?;
            }
            Ok(())
        })?;
        self.last_seq = seq;
        self.events_since_snapshot += events.len() as u64;
        Ok(seq)
    }

    /// Commits a small durable write (the time, under a meta key): whether the store takes
    /// writes again after a failure.
    pub fn probe(&mut self) -> Result<(), JournalError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.write(Durability::Immediate, |txn| {
            txn.open_table(META)?.insert(KEY_PROBE, now)?;
            Ok(())
        })
    }

    /// Replaces every event up to `state.seq` with a snapshot of `state`, in one transaction.
    pub fn compact(&mut self, state: &State) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(state).map_err(JournalError::Encode)?;
        let upto = state.seq;
        let mut dropped = 0;
        self.write(Durability::Immediate, |txn| {
            txn.open_table(SNAPSHOT)?
                .insert(KEY_STATE, bytes.as_slice())?;
            txn.open_table(META)?.insert(KEY_SNAPSHOT_SEQ, upto)?;
            let mut events = txn.open_table(EVENTS)?;
            let before = events.len()?;
            events.retain_in(..=upto, |_, _| false)?;
            dropped = before - events.len()?;
            Ok(())
        })?;
        self.snapshot_seq = upto;
        self.events_since_snapshot = self.events_since_snapshot.saturating_sub(dropped);
        Ok(())
    }

    fn write(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), JournalError> {
        let store = |source: redb::Error| JournalError::Store {
            path: self.path.clone(),
            source,
        };
        let mut txn = self.db.begin_write().map_err(|e| store(e.into()))?;
        txn.set_durability(durability).map_err(|e| {
            store(redb::Error::from(redb::StorageError::Corrupted(
                e.to_string(),
            )))
        })?;
        if let Err(e) = f(&txn) {
            txn.abort().ok();
            return Err(store(e));
        }
        txn.commit().map_err(|e| store(e.into()))
    }

    /// Path of the journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number of the last committed event (durable, or made so by the next durable
    /// commit).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Sequence number the snapshot covers.
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot_seq
    }

    /// Events stored after the snapshot.
    pub fn events_since_snapshot(&self) -> u64 {
        self.events_since_snapshot
    }
}

/// What a journal folds to.
struct Folded {
    state: State,
    last_seq: u64,
    snapshot_seq: u64,
    replayed: u64,
    /// The schema the file was written in.
    version: u64,
}

/// Runs `f` on the journal opened without modifying it: read-only when the file is clean, else on
/// a scratch copy that redb recovers (a crash left it needing recovery). A journal concord refuses
/// is therefore never touched.
fn read_only<T>(
    path: &Path,
    f: impl Fn(&dyn ReadableDatabase) -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut magic = [0u8; REDB_MAGIC.len()];
    let mut file = std::fs::File::open(path).map_err(|source| JournalError::Io {
        path: path.to_owned(),
        source,
    })?;
    if file.read_exact(&mut magic).is_err() || magic != REDB_MAGIC {
        return Err(corrupt("not a concord journal: bad file header".into()));
    }
    drop(file);
    match ReadOnlyDatabase::open(path) {
        Ok(db) => f(&db),
        Err(DatabaseError::DatabaseAlreadyOpen) => Err(JournalError::InUse {
            path: path.to_owned(),
        }),
        Err(DatabaseError::UpgradeRequired(v)) => {
            Err(corrupt(format!("store file format {v} is not supported")))
        }
        Err(_) => {
            let scratch = path.with_extension("redb.check");
            let result = std::fs::copy(path, &scratch)
                .map_err(|source| JournalError::Io {
                    path: scratch.clone(),
                    source,
                })
                .and_then(|_| Database::open(&scratch).map_err(|e| corrupt(e.to_string())))
                .and_then(|db| f(&db));
            std::fs::remove_file(&scratch).ok();
            result
        }
    }
}

/// Checks the schema version and folds snapshot + events into a [`State`].
fn fold(path: &Path, db: &dyn ReadableDatabase) -> Result<Folded, JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let txn = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let meta = txn
        .open_table(META)
        .map_err(|e| corrupt(format!("no schema header: {e}")))?;
    let version = meta
        .get(KEY_SCHEMA)
        .map_err(|e| corrupt(e.to_string()))?
        .ok_or_else(|| corrupt("no schema version recorded".into()))?
        .value();
    if version > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version != SCHEMA_VERSION && version != SCHEMA_V1 {
        return Err(JournalError::UnknownSchema {
            path: path.to_owned(),
            found: version,
        });
    }
    let snapshot_seq = meta
        .get(KEY_SNAPSHOT_SEQ)
        .map_err(|e| corrupt(e.to_string()))?
        .map(|v| v.value())
        .unwrap_or(0);
    let snapshot = txn
        .open_table(SNAPSHOT)
        .map_err(|e| corrupt(format!("no snapshot table: {e}")))?;
    let mut state = match snapshot
        .get(KEY_STATE)
        .map_err(|e| corrupt(e.to_string()))?
    {
        Some(bytes) => decode::<State>(version, bytes.value(), schema1::upgrade_state)
            .map_err(|e| corrupt(format!("snapshot does not decode: {e}")))?,
        None => State::default(),
    };
    let events = txn
        .open_table(EVENTS)
        .map_err(|e| corrupt(format!("no events table: {e}")))?;
    let mut last_seq = snapshot_seq.max(state.seq);
    let mut replayed = 0;
    for row in events.iter().map_err(|e| corrupt(e.to_string()))? {
        let (k, v) = row.map_err(|e| corrupt(e.to_string()))?;
        let seq = k.value();
        let event: Event = decode(version, v.value(), schema1::upgrade_event)
            .map_err(|e| corrupt(format!("event {seq} does not decode: {e}")))?;
        state.apply(seq, &event);
        last_seq = seq;
        replayed += 1;
    }
    Ok(Folded {
        state,
        last_seq,
        snapshot_seq,
        replayed,
        version,
    })
}

/// Rewrites a folded schema-1 journal as schema 2: the state as the snapshot of a new file, which
/// then replaces the old one (kept beside it as `<name>.schema1`). A crash before the rename
/// leaves the old journal in place, migrated again at the next start; after it, the new one.
fn migrate(path: &Path, folded: Folded) -> Result<Folded, JournalError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| JournalError::Io { path, source }
    };
    let mut state = folded.state;
    state.seq = folded.last_seq;
    let fresh = path.with_extension("redb.schema2");
    let backup = path.with_extension("redb.schema1");
    if fresh.exists() {
        std::fs::remove_file(&fresh).map_err(io(&fresh))?;
    }
    let (mut journal, _, _) = Journal::create(&fresh)?;
    journal.last_seq = state.seq;
    journal.compact(&state)?;
    drop(journal);
    if backup.exists() {
        std::fs::remove_file(&backup).map_err(io(&backup))?;
    }
    std::fs::hard_link(path, &backup).map_err(io(&backup))?;
    std::fs::rename(&fresh, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    tracing::info!(
        journal = %path.display(),
        backup = %backup.display(),
        seq = state.seq,
        sandboxes = state.sandboxes.len(),
        containers = state.containers.len(),
        "migrated the journal from schema {SCHEMA_V1} to {SCHEMA_VERSION}; the old file is kept as the backup"
    );
    Ok(Folded {
        last_seq: state.seq,
        snapshot_seq: state.seq,
        replayed: 0,
        version: SCHEMA_VERSION,
        state,
    })
}

/// Decodes a stored value of schema `version` (schema 1 through its upgrade to schema 2's JSON).
fn decode<T: serde::de::DeserializeOwned>(
    version: u64,
    bytes: &[u8],
    upgrade: fn(&[u8]) -> Result<serde_json::Value, String>,
) -> Result<T, String> {
    if version == SCHEMA_V1 {
        serde_json::from_value(upgrade(bytes)?).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

fn open_error(path: &Path, e: DatabaseError) -> JournalError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => JournalError::InUse {
            path: path.to_owned(),
        },
        DatabaseError::Storage(redb::StorageError::Io(source)) => JournalError::Io {
            path: path.to_owned(),
            source,
        },
        other => JournalError::Corrupt {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    }
}

/// Writes a journal that claims `version`, for tests of the refusal paths.
#[doc(hidden)]
pub fn write_foreign_schema(path: &Path, version: u64) -> Result<(), redb::Error> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert(KEY_SCHEMA, version)?;
    txn.commit()?;
    Ok(())
}

/// Sets `path`'s mode to `mode` unless it has no more than that already.
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::event::ObjectKey;
    use super::*;

    fn cidr(n: u64) -> Event {
        Event::PodCidrRequested {
            cidr: format!("10.{}.0.0/16", n % 256),
        }
    }

    fn sha(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    fn fixture(dir: &Path) -> PathBuf {
        let path = dir.join("journal.redb");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-schema1.redb");
        std::fs::copy(src, &path).unwrap();
        path
    }

    fn schema_of(path: &Path) -> u64 {
        let db = ReadOnlyDatabase::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let v = txn
            .open_table(META)
            .unwrap()
            .get(KEY_SCHEMA)
            .unwrap()
            .unwrap()
            .value();
        v
    }

    #[test]
    fn a_schema1_journal_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let original = sha(&path);
        assert_eq!(schema_of(&path), 1);
        let (j, state, info) = Journal::open(&path).unwrap();
        drop(j);
        // What crictl made with the schema-1 release (tests/fixtures/README.md).
        assert_eq!(state.sandboxes.len(), 1, "{:?}", state.sandboxes.keys());
        let pod = state.sandboxes.values().next().unwrap();
        let meta = pod.config.metadata.as_ref().unwrap();
        assert_eq!(
            (meta.name.as_str(), meta.namespace.as_str()),
            ("fixture", "schema1")
        );
        assert_eq!(pod.config.annotations["note"], "schema-1 journal fixture ü");
        assert_eq!(
            pod.configured_cgroup_parent(),
            "/kubepods/besteffort/podu-1"
        );
        assert!(pod.ready(), "{pod:?}");
        assert_eq!(pod.ips.len(), 1);
        assert_eq!(state.containers.len(), 2);
        let by_name = |n: &str| {
            state
                .containers
                .values()
                .find(|c| c.config.metadata.as_ref().unwrap().name == n)
                .unwrap()
                .clone()
        };
        let app = by_name("app");
        let env: Vec<_> = app
            .config
            .envs
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_slice()))
            .collect();
        assert!(
            env.contains(&("UNICODE", "héllo wörld".as_bytes())),
            "{env:?}"
        );
        assert!(env.contains(&("EMPTY", b"".as_slice())));
        assert_eq!(app.config.mounts[0].container_path, "/data");
        assert!(app.resources_updated);
        let resources = app
            .config
            .linux
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap();
        assert_eq!(resources.memory_limit_in_bytes, 134217728);
        // (crictl update sends the whole resources: the CPU quota went with it.)
        assert_eq!(resources.cpu_quota, 0);
        let side = by_name("side");
        let side_resources = side
            .config
            .linux
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap();
        assert_eq!(side_resources.cpu_quota, 50000);
        assert_eq!(
            app.cri_state(),
            crate::cri::ContainerState::ContainerRunning
        );
        assert_eq!(
            by_name("side").cri_state(),
            crate::cri::ContainerState::ContainerExited
        );
        assert!(state.sandbox_names.contains_key("fixture_schema1_u-1_0"));
        assert!(!state.sandbox_names.contains_key("fixture2_schema1_u-2_0"));
        // The new file is schema 2 and holds it all as its snapshot; the old one is kept.
        assert_eq!(schema_of(&path), SCHEMA_VERSION);
        assert_eq!(info.replayed, 0);
        assert_eq!(sha(&path.with_extension("redb.schema1")), original);
        assert!(!path.with_extension("redb.schema2").exists());
        let (j, again, info) = Journal::open(&path).unwrap();
        assert_eq!((info.replayed, info.snapshot_seq), (0, state.seq));
        assert_eq!(j.last_seq(), state.seq);
        assert_eq!(again, state);
        assert_eq!(sha(&path.with_extension("redb.schema1")), original);
    }

    #[test]
    fn a_migration_cut_short_is_done_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        // A crash left a half-made new file (and no rename): the old journal is still the one.
        std::fs::write(path.with_extension("redb.schema2"), b"half").unwrap();
        let (_, state, _) = Journal::open(&path).unwrap();
        assert_eq!(state.containers.len(), 2);
        assert_eq!(schema_of(&path), SCHEMA_VERSION);
    }

    #[test]
    fn cri_messages_are_stored_as_protobuf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let (mut j, _, _) = Journal::open(&path).unwrap();
        let config = crate::cri::PodSandboxConfig {
            hostname: "h".into(),
            ..Default::default()
        };
        let ev = Event::SandboxRequested {
            id: "s".into(),
            config: Box::new(config.clone()),
            runtime_handler: String::new(),
            netns_path: None,
            created_at: 1,
        };
        j.append(std::slice::from_ref(&ev), true).unwrap();
        drop(j);
        let db = ReadOnlyDatabase::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let stored: serde_json::Value = serde_json::from_slice(
            txn.open_table(EVENTS)
                .unwrap()
                .get(1)
                .unwrap()
                .unwrap()
                .value(),
        )
        .unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(stored["config"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes, prost::Message::encode_to_vec(&config));
    }

    #[test]
    fn appended_events_are_replayed_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let (mut j, _, info) = Journal::open(&path).unwrap();
        assert!(info.created);
        for n in 1..=5 {
            assert_eq!(j.append(&[cidr(n)], true).unwrap(), n);
        }
        drop(j);
        let (j, state, info) = Journal::open(&path).unwrap();
        assert_eq!(info.replayed, 5);
        assert_eq!(j.last_seq(), 5);
        assert_eq!(state.generation(&ObjectKey::RuntimeConfig), 5);
        assert_eq!(state.runtime_config.pod_cidr, "10.5.0.0/16");
    }

    #[test]
    fn the_journal_and_its_dir_are_roots_alone() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = state.join("j.redb");
        drop(Journal::open(&path).unwrap());
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A journal made by an older concord with the umask's modes is restricted at open.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Journal::open(&path).unwrap());
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn compaction_keeps_the_state_and_drops_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let (mut j, mut state, _) = Journal::open(&path).unwrap();
        for n in 1..=50 {
            let ev = cidr(n);
            let seq = j.append(std::slice::from_ref(&ev), true).unwrap();
            state.apply(seq, &ev);
        }
        j.compact(&state).unwrap();
        assert_eq!(j.events_since_snapshot(), 0);
        let ev = cidr(51);
        let seq = j.append(std::slice::from_ref(&ev), true).unwrap();
        assert_eq!(seq, 51);
        state.apply(seq, &ev);
        drop(j);
        let (j, replayed, info) = Journal::open(&path).unwrap();
        assert_eq!(info.replayed, 1);
        assert_eq!(info.snapshot_seq, 50);
        assert_eq!(j.last_seq(), 51);
        assert_eq!(replayed, state);
    }

    #[test]
    fn pod_resource_updates_replay_from_events_and_from_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let (mut j, mut state, _) = Journal::open(&path).unwrap();
        let resources = crate::cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let events = [
            Event::SandboxRequested {
                id: "p".into(),
                config: Box::default(),
                runtime_handler: String::new(),
                netns_path: None,
                created_at: 1,
            },
            Event::SandboxResourcesUpdated {
                id: "p".into(),
                overhead: None,
                resources: Some(Box::new(resources.clone())),
            },
        ];
        for ev in &events {
            let seq = j.append(std::slice::from_ref(ev), true).unwrap();
            state.apply(seq, ev);
        }
        drop(j);
        let (mut j, replayed, _) = Journal::open(&path).unwrap();
        assert_eq!(replayed, state);
        let linux = replayed.sandboxes["p"].config.linux.clone().unwrap();
        assert_eq!(linux.resources, Some(resources));
        assert!(replayed.sandboxes["p"].resources_updated);
        j.compact(&replayed).unwrap();
        drop(j);
        let (_, from_snapshot, info) = Journal::open(&path).unwrap();
        assert_eq!(info.replayed, 0);
        assert_eq!(from_snapshot, state);
    }

    #[test]
    fn newer_schema_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        write_foreign_schema(&path, SCHEMA_VERSION + 1).unwrap();
        let before = sha(&path);
        let err = Journal::open(&path).err().unwrap();
        assert!(matches!(err, JournalError::NewerSchema { .. }), "{err}");
        assert!(err.to_string().contains("newer"));
        assert_eq!(sha(&path), before);
    }

    #[test]
    fn garbage_is_refused_as_corrupt_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        std::fs::write(&path, b"this is not a journal at all, just text\n").unwrap();
        let before = sha(&path);
        let err = Journal::open(&path).err().unwrap();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        assert_eq!(sha(&path), before);
    }

    #[test]
    fn a_damaged_body_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let (mut j, _, _) = Journal::open(&path).unwrap();
        for n in 1..=20 {
            j.append(&[cidr(n)], true).unwrap();
        }
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for b in &mut bytes[4096.min(len / 2)..] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let before = sha(&path);
        let result = Journal::open(&path);
        assert!(result.is_err(), "a damaged journal must not open");
        assert_eq!(sha(&path), before);
    }
}
