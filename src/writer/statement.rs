//! Session slots (one per store and worker in a process) and the statement guard that both write
//! paths (COPY and `pocaduck_write`) use: begin, roll back unless finished, commit or keep.

use super::*;

type Key = (std::path::PathBuf, String);
/// A worker's session slot: empty when no session is open.
pub type Slot = Arc<Mutex<Option<Session>>>;

/// The sessions of this process, by (store directory, worker).
fn sessions() -> &'static Mutex<HashMap<Key, Slot>> {
    static S: OnceLock<Mutex<HashMap<Key, Slot>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// A handle on the session slot of (store, worker) in this process; the slot is empty when no
/// session is open. Keyed by the store's location (one writer per worker): a worker's open
/// session belongs to the storage options (endpoint, credentials) it was opened with, and a
/// statement with other options is refused rather than writing through the session's client.
pub fn session_slot(store: &Store, worker: &str) -> Result<Slot> {
    layout::check_worker_id(worker, "WORKER")?;
    let key = (store.cache_key(), worker.to_string());
    let slot = sessions()
        .lock()
        .map_err(|_| Error::Internal("session registry poisoned".into()))?
        .entry(key)
        .or_default()
        .clone();
    wait_for_statement_end(&slot);
    if lock_slot(&slot)
        .as_ref()
        .is_some_and(|s| s.store().client_key() != store.client_key())
    {
        return Err(Error::Conflict {
            store: store.name.clone(),
            msg: format!(
                "worker '{worker}' has an open session (uncommitted rows) opened with other storage options (SET pocaduck_storage_options): commit it from the connection that opened it, or use the same options"
            ),
        });
    }
    Ok(slot)
}

/// Waits (up to 2 s) while the slot's session is inside a statement. A failed COPY releases its
/// statement when DuckDB destroys its state, which DuckDB 2.0 may do on the last worker thread
/// to let go of it, a moment after the failure was reported: the next statement must not find
/// that statement's session still open. A statement really running at the same time is still
/// refused afterwards (rule 4).
fn wait_for_statement_end(slot: &Slot) {
    for _ in 0..200 {
        if !lock_slot(slot).as_ref().is_some_and(|s| s.in_statement()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Locks a session slot, recovering from a poisoned lock (the session inside is discarded).
pub fn lock_slot(slot: &Mutex<Option<Session>>) -> std::sync::MutexGuard<'_, Option<Session>> {
    match slot.lock() {
        Ok(g) => g,
        Err(p) => {
            let mut g = p.into_inner();
            *g = None;
            g
        }
    }
}

/// How a [`Statement`] reaches its session slot.
///
/// A held lock ([`std::sync::MutexGuard`]) keeps the slot locked for the whole statement (a
/// statement that runs within one call, like `pocaduck_write`); the [`Slot`] itself is locked
/// for each step (a statement that spans many callbacks, like COPY, where other statements must
/// be refused rather than wait).
pub trait SlotAccess {
    /// Runs `f` on the content of the slot.
    fn with_slot<T>(&mut self, f: impl FnOnce(&mut Option<Session>) -> T) -> T;
}

impl SlotAccess for Slot {
    fn with_slot<T>(&mut self, f: impl FnOnce(&mut Option<Session>) -> T) -> T {
        f(&mut lock_slot(self))
    }
}

impl SlotAccess for std::sync::MutexGuard<'_, Option<Session>> {
    fn with_slot<T>(&mut self, f: impl FnOnce(&mut Option<Session>) -> T) -> T {
        f(self)
    }
}

/// How a [`Statement`] ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementEnd {
    /// Points of the session not yet committed (0 after a commit).
    pub pending_points: u64,
    /// What the commit made durable, if the statement committed a session.
    pub commit: Option<CommitSummary>,
}

/// One writing statement in a worker's session (rule 5 of ARCHITECTURE.md), as a guard.
///
/// [`Statement::begin`] opens the session if the slot is empty and marks the statement's start;
/// [`Statement::finish`] ends it (commits, or keeps its rows in the session). Dropped unfinished
/// (the statement failed), it rolls the statement's rows back, and drops the session if that was
/// impossible (rows already encoded: the whole uncommitted session is discarded) or left it
/// empty (so a failed first statement fixes no types). Every path also drops a session it leaves
/// empty.
pub struct Statement<A: SlotAccess> {
    access: A,
    worker: String,
    finished: bool,
}

impl<A: SlotAccess> Statement<A> {
    /// Begins a statement: starts a session with `start` if the slot has none, runs `prepare` on
    /// it (checks against the statement), then [`Session::begin_statement`]. On an error the
    /// session is dropped if it is empty and no other statement is in it.
    pub fn begin(
        mut access: A,
        start: impl FnOnce() -> Result<Session>,
        prepare: impl FnOnce(&mut Session) -> Result<()>,
    ) -> Result<Statement<A>> {
        let worker = access.with_slot(|slot| -> Result<String> {
            if slot.is_none() {
                *slot = Some(start()?);
            }
            let s = slot
                .as_mut()
                .ok_or_else(|| Error::Internal("no session".into()))?;
            // Checked first: `prepare` may change the session (options, REPLACE_BLOCKS), which
            // must not happen to another statement's session.
            let started = s
                .check_free()
                .and_then(|_| prepare(s))
                .and_then(|_| s.begin_statement());
            if let Err(e) = started {
                if s.is_empty() && !s.in_statement() {
                    *slot = None;
                }
                return Err(e);
            }
            Ok(s.worker.clone())
        })?;
        Ok(Statement {
            access,
            worker,
            finished: false,
        })
    }

    /// Appends rows to the session ([`Session::append`]).
    pub fn append(&mut self, batch: &RecordBatch) -> Result<()> {
        let worker = &self.worker;
        self.access.with_slot(|slot| match slot.as_mut() {
            Some(s) => s.append(batch),
            None => Err(Error::Internal(format!(
                "the session of worker '{worker}' was closed during the statement"
            ))),
        })
    }

    /// Ends the statement: with `commit`, commits the session (and closes it); otherwise keeps
    /// its rows in the session, which is dropped if empty.
    pub fn finish(mut self, commit: bool) -> Result<StatementEnd> {
        self.finished = true;
        self.access.with_slot(|slot| {
            if commit {
                let summary = slot.take().map(Session::commit).transpose()?;
                return Ok(StatementEnd {
                    pending_points: 0,
                    commit: summary,
                });
            }
            let mut end = StatementEnd::default();
            if let Some(s) = slot.as_mut() {
                s.end_statement();
                end.pending_points = s.pending_points();
                if s.is_empty() {
                    *slot = None;
                }
            }
            Ok(end)
        })
    }
}

impl<A: SlotAccess> Drop for Statement<A> {
    fn drop(&mut self) {
        // During a panic the lock is poisoned, and the next `lock_slot` discards the session:
        // nothing to do here (and nothing that could panic twice).
        if self.finished || std::thread::panicking() {
            return;
        }
        self.access.with_slot(|slot| {
            if let Some(s) = slot.as_mut() {
                if !s.rollback_statement() || s.is_empty() {
                    *slot = None;
                }
            }
        });
    }
}
