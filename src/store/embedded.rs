//! The embedded store: one redb file, ACID, for a single instance.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    BATCH_ID_TTL, BatchId, Bootstrapped, ClassCounts, Event, EventWrite, HookState, StoreError,
    StoreResult, has_active_admin,
};
use crate::limits::Period;
use crate::token::{Token, TokenId};

/// id → token JSON.
const TOKENS: TableDefinition<u32, &[u8]> = TableDefinition::new("tokens");
/// Ids of deleted tokens, so they are never reused.
const RETIRED: TableDefinition<u32, ()> = TableDefinition::new("retired_ids");

/// (id, day number) → counts `[2xx, 3xx, 4xx, 5xx]`.
const COUNTS: TableDefinition<(u32, i32), [u64; 4]> = TableDefinition::new("day_counts");
/// Count batches applied (batch id → Unix seconds when), so a batch sent again is not
/// counted twice; forgotten after [`BATCH_ID_TTL`] by `prune_counts`.
const BATCHES: TableDefinition<[u8; 16], i64> = TableDefinition::new("applied_batches");
/// id → last use (Unix seconds).
const LAST_USED: TableDefinition<u32, i64> = TableDefinition::new("last_used");
/// id → quota count: (period 0 day / 1 month, period start Unix s, requests used).
const QUOTAS: TableDefinition<u32, (u8, i64, u64)> = TableDefinition::new("quota_usage");
/// (id, sequence) → event JSON.
const EVENTS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("events");
/// Ids of tokens whose events may not all be delivered to every webhook yet.
const PENDING: TableDefinition<u32, ()> = TableDefinition::new("events_pending");
/// (id, webhook) → where that webhook stands with the token's events.
const HOOKS: TableDefinition<(u32, &str), (u64, u32, i64)> = TableDefinition::new("webhook_state");
/// (id, marker) → value: events raised once per value (see `super::Once`).
const MARKERS: TableDefinition<(u32, &str), &str> = TableDefinition::new("event_markers");
/// Webhook name → when it was first configured (Unix ms).
const SINCE: TableDefinition<&str, i64> = TableDefinition::new("webhook_since");

/// A redb database holding the token table.
pub struct EmbeddedStore {
    db: Database,
    /// Woken after every write that added an event.
    pub(crate) events_written: tokio::sync::Notify,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(bytes: &[u8]) -> StoreResult<Token> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode(token: &Token) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(token).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens the database file, or creates it (and its parent directory) when there is
    /// no file at all. A file that exists but is empty, not a database or unreadable is
    /// an error naming it: treating it as a new store would silently drop every token
    /// and mint a new bootstrap admin.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        let shown = path.display();
        let db = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(unavailable(format!(
                    "{shown} is a directory, not a store file"
                )));
            }
            Ok(m) if m.len() == 0 => {
                return Err(unavailable(format!(
                    "{shown} exists but is empty; refusing to start on it as a new store \
                     (restore it from a backup, or remove it to start with no tokens)"
                )));
            }
            Ok(_) => Database::open(path)
                .map_err(|e| unavailable(format!("cannot open {shown}: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                // create_new: never initialise a file someone else made meanwhile.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| unavailable(format!("cannot create {shown}: {e}")))?;
                redb::backends::FileBackend::new(file)
                    .and_then(|b| redb::Builder::new().create_with_backend(b))
                    .map_err(|e| unavailable(format!("cannot create {shown}: {e}")))?
            }
            Err(e) => return Err(unavailable(format!("cannot read {shown}: {e}"))),
        };
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(TOKENS).map_err(unavailable)?;
        txn.open_table(RETIRED).map_err(unavailable)?;
        txn.open_table(COUNTS).map_err(unavailable)?;
        txn.open_table(BATCHES).map_err(unavailable)?;
        txn.open_table(LAST_USED).map_err(unavailable)?;
        txn.open_table(EVENTS).map_err(unavailable)?;
        txn.open_table(PENDING).map_err(unavailable)?;
        txn.open_table(HOOKS).map_err(unavailable)?;
        txn.open_table(MARKERS).map_err(unavailable)?;
        txn.open_table(SINCE).map_err(unavailable)?;
        txn.open_table(QUOTAS).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(EmbeddedStore {
            db,
            events_written: tokio::sync::Notify::new(),
        })
    }

    /// One token.
    pub fn get(&self, id: TokenId) -> StoreResult<Option<Token>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(TOKENS).map_err(unavailable)?;
        let last_used = txn.open_table(LAST_USED).map_err(unavailable)?;
        match table.get(id.number()).map_err(unavailable)? {
            Some(v) => {
                let mut t = decode(v.value())?;
                fill_last_used(&mut t, &last_used)?;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }

    /// Every token.
    pub fn list(&self) -> StoreResult<Vec<Token>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(TOKENS).map_err(unavailable)?;
        let last_used = txn.open_table(LAST_USED).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(unavailable)? {
            let (_, v) = row.map_err(unavailable)?;
            let mut t = decode(v.value())?;
            fill_last_used(&mut t, &last_used)?;
            out.push(t);
        }
        Ok(out)
    }

    /// Inserts a token whose id was never used, with its events.
    pub fn insert(&self, token: &Token, events: &[EventWrite]) -> StoreResult<bool> {
        let bytes = encode(token)?;
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let retired = txn.open_table(RETIRED).map_err(unavailable)?;
            if retired
                .get(token.id.number())
                .map_err(unavailable)?
                .is_some()
            {
                return Ok(false);
            }
            let mut table = txn.open_table(TOKENS).map_err(unavailable)?;
            if table.get(token.id.number()).map_err(unavailable)?.is_some() {
                return Ok(false);
            }
            table
                .insert(token.id.number(), bytes.as_slice())
                .map_err(unavailable)?;
        }
        push_events(&txn, token.id, events)?;
        txn.commit().map_err(unavailable)?;
        Ok(true)
    }

    /// Compare-and-swap on `version`, with the change's events.
    pub fn replace(
        &self,
        token: &Token,
        expected_version: u64,
        events: &[EventWrite],
    ) -> StoreResult<bool> {
        let bytes = encode(token)?;
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = txn.open_table(TOKENS).map_err(unavailable)?;
            let current = match table.get(token.id.number()).map_err(unavailable)? {
                Some(v) => decode(v.value())?,
                None => return Ok(false),
            };
            if current.version != expected_version {
                return Ok(false);
            }
            table
                .insert(token.id.number(), bytes.as_slice())
                .map_err(unavailable)?;
        }
        push_events(&txn, token.id, events)?;
        txn.commit().map_err(unavailable)?;
        Ok(true)
    }

    /// Deletes a token and retires its id.
    pub fn delete(&self, id: TokenId) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let existed = {
            let mut table = txn.open_table(TOKENS).map_err(unavailable)?;
            let existed = table.remove(id.number()).map_err(unavailable)?.is_some();
            retire(&txn, id)?;
            existed
        };
        txn.commit().map_err(unavailable)?;
        Ok(existed)
    }

    /// Deletes a token and retires its id if its version is still `expected_version`;
    /// one transaction, with the delete's events.
    pub fn delete_if_version(
        &self,
        id: TokenId,
        expected_version: u64,
        events: &[EventWrite],
    ) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = txn.open_table(TOKENS).map_err(unavailable)?;
            let current = match table.get(id.number()).map_err(unavailable)? {
                Some(v) => decode(v.value())?,
                None => return Ok(false),
            };
            if current.version != expected_version {
                return Ok(false);
            }
            table.remove(id.number()).map_err(unavailable)?;
            retire(&txn, id)?;
        }
        push_events(&txn, id, events)?;
        txn.commit().map_err(unavailable)?;
        Ok(true)
    }

    /// Inserts the bootstrap token unless an active admin exists, with the id checks of
    /// [`EmbeddedStore::insert`]; one transaction.
    pub fn insert_bootstrap(
        &self,
        token: &Token,
        events: &[EventWrite],
    ) -> StoreResult<Bootstrapped> {
        let bytes = encode(token)?;
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = txn.open_table(TOKENS).map_err(unavailable)?;
            let mut existing = Vec::new();
            for row in table.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                existing.push(decode(v.value())?);
            }
            if has_active_admin(&existing, token.created_at) {
                return Ok(Bootstrapped::AdminExists);
            }
            let retired = txn.open_table(RETIRED).map_err(unavailable)?;
            if retired
                .get(token.id.number())
                .map_err(unavailable)?
                .is_some()
                || table.get(token.id.number()).map_err(unavailable)?.is_some()
            {
                return Ok(Bootstrapped::IdTaken);
            }
            table
                .insert(token.id.number(), bytes.as_slice())
                .map_err(unavailable)?;
        }
        push_events(&txn, token.id, events)?;
        txn.commit().map_err(unavailable)?;
        Ok(Bootstrapped::Inserted)
    }
}

fn fill_last_used(t: &mut Token, table: &impl ReadableTable<u32, i64>) -> StoreResult<()> {
    if let Some(v) = table.get(t.id.number()).map_err(unavailable)? {
        t.last_used_at = jiff::Timestamp::from_second(v.value()).ok();
    }
    Ok(())
}

impl EmbeddedStore {
    /// Adds day counts in one transaction, together with the batch id; `false` (and
    /// nothing changed) if that batch was applied before.
    pub fn add_counts(
        &self,
        batch: BatchId,
        rows: &[(TokenId, i32, ClassCounts)],
    ) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut batches = txn.open_table(BATCHES).map_err(unavailable)?;
            if batches
                .get(batch.as_bytes())
                .map_err(unavailable)?
                .is_some()
            {
                drop(batches);
                txn.abort().map_err(unavailable)?;
                return Ok(false);
            }
            batches
                .insert(batch.as_bytes(), jiff::Timestamp::now().as_second())
                .map_err(unavailable)?;
            let mut table = txn.open_table(COUNTS).map_err(unavailable)?;
            for (id, day, add) in rows {
                let key = (id.number(), *day);
                let mut cur = table
                    .get(key)
                    .map_err(unavailable)?
                    .map_or([0; 4], |v| v.value());
                for (c, a) in cur.iter_mut().zip(add) {
                    *c = c.saturating_add(*a);
                }
                table.insert(key, cur).map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)?;
        Ok(true)
    }

    /// Day counts of one token in `from..=to`.
    pub fn counts(&self, id: TokenId, from: i32, to: i32) -> StoreResult<Vec<(i32, ClassCounts)>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(COUNTS).map_err(unavailable)?;
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        for row in table
            .range((id.number(), from)..=(id.number(), to))
            .map_err(unavailable)?
        {
            let (k, v) = row.map_err(unavailable)?;
            out.push((k.value().1, v.value()));
        }
        Ok(out)
    }

    /// Deletes day counts older than `before`.
    pub fn prune_counts(&self, before: i32) -> StoreResult<u64> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let mut removed = 0u64;
        {
            let mut table = txn.open_table(COUNTS).map_err(unavailable)?;
            table
                .retain(|k, _| {
                    let keep = k.1 >= before;
                    if !keep {
                        removed += 1;
                    }
                    keep
                })
                .map_err(unavailable)?;
            let ttl = i64::try_from(BATCH_ID_TTL.as_secs()).unwrap_or(i64::MAX);
            let oldest = jiff::Timestamp::now().as_second().saturating_sub(ttl);
            txn.open_table(BATCHES)
                .map_err(unavailable)?
                .retain(|_, at| at >= oldest)
                .map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(removed)
    }

    /// Records last-use times (the later one wins).
    pub fn set_last_used(&self, updates: &[(TokenId, jiff::Timestamp)]) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            let mut table = txn.open_table(LAST_USED).map_err(unavailable)?;
            for (id, at) in updates {
                // A token deleted meanwhile gets no row.
                if tokens.get(id.number()).map_err(unavailable)?.is_none() {
                    continue;
                }
                let cur = table
                    .get(id.number())
                    .map_err(unavailable)?
                    .map(|v| v.value());
                let at = at.as_second();
                if cur.is_none_or(|c| c < at) {
                    table.insert(id.number(), at).map_err(unavailable)?;
                }
            }
        }
        txn.commit().map_err(unavailable)
    }

    /// Writes quota counts `(id, period, start, used)` in one transaction; a token
    /// deleted meanwhile (a request admitted while it was being deleted) gets no row.
    pub fn set_quotas(&self, rows: &[(TokenId, Period, i64, u64)]) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            let mut table = txn.open_table(QUOTAS).map_err(unavailable)?;
            for (id, period, start, used) in rows {
                if tokens.get(id.number()).map_err(unavailable)?.is_none() {
                    continue;
                }
                let p = u8::from(*period == Period::Month);
                table
                    .insert(id.number(), (p, *start, *used))
                    .map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)
    }

    /// Every stored quota count.
    pub fn quotas(&self) -> StoreResult<Vec<(TokenId, Period, i64, u64)>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(QUOTAS).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(unavailable)? {
            let (k, v) = row.map_err(unavailable)?;
            let (p, start, used) = v.value();
            let period = if p == 1 { Period::Month } else { Period::Day };
            if let Some(id) = TokenId::new(k.value()) {
                out.push((id, period, start, used));
            }
        }
        Ok(out)
    }

    /// Writes gateway-raised events for a live token (once per marker), if its version
    /// is still `expected_version` (when given); how many were written.
    pub fn raise(
        &self,
        id: TokenId,
        expected_version: Option<u64>,
        events: &[EventWrite],
    ) -> StoreResult<usize> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let table = txn.open_table(TOKENS).map_err(unavailable)?;
            let current = match table.get(id.number()).map_err(unavailable)? {
                Some(v) => decode(v.value())?,
                None => return Ok(0),
            };
            if expected_version.is_some_and(|v| v != current.version) {
                return Ok(0);
            }
        }
        let n = push_events(&txn, id, events)?;
        if n == 0 {
            // Raised before: nothing to make durable.
            txn.abort().map_err(unavailable)?;
        } else {
            txn.commit().map_err(unavailable)?;
        }
        Ok(n)
    }

    /// A token's events, oldest first.
    pub fn events(&self, id: TokenId) -> StoreResult<Vec<Event>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(EVENTS).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in table
            .range((id.number(), 0)..=(id.number(), u64::MAX))
            .map_err(unavailable)?
        {
            let (_, v) = row.map_err(unavailable)?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
        Ok(out)
    }
}

/// Appends `events` to `id`'s log inside `txn` (skipping those whose marker already
/// holds their value) and marks the token pending; how many were written.
fn push_events(
    txn: &redb::WriteTransaction,
    id: TokenId,
    events: &[EventWrite],
) -> StoreResult<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut table = txn.open_table(EVENTS).map_err(unavailable)?;
    let mut markers = txn.open_table(MARKERS).map_err(unavailable)?;
    let mut next = table
        .range((id.number(), 0)..=(id.number(), u64::MAX))
        .map_err(unavailable)?
        .next_back()
        .transpose()
        .map_err(unavailable)?
        .map_or(0, |(k, _)| k.value().1 + 1);
    let mut written = 0;
    for e in events {
        if let Some(once) = &e.once {
            let key = (id.number(), once.kind);
            let held = markers
                .get(key)
                .map_err(unavailable)?
                .is_some_and(|v| v.value() == once.value);
            if held {
                continue;
            }
            markers
                .insert(key, once.value.as_str())
                .map_err(unavailable)?;
        }
        let bytes = e.json()?;
        table
            .insert((id.number(), next), bytes.as_bytes())
            .map_err(unavailable)?;
        next += 1;
        written += 1;
    }
    if written > 0 {
        txn.open_table(PENDING)
            .map_err(unavailable)?
            .insert(id.number(), ())
            .map_err(unavailable)?;
    }
    Ok(written)
}

/// Retires a deleted token's id (never handed out again) and drops what was kept per
/// token beside it: last use, quota count, event markers.
fn retire(txn: &redb::WriteTransaction, id: TokenId) -> StoreResult<()> {
    let mut retired = txn.open_table(RETIRED).map_err(unavailable)?;
    retired.insert(id.number(), ()).map_err(unavailable)?;
    let mut last_used = txn.open_table(LAST_USED).map_err(unavailable)?;
    last_used.remove(id.number()).map_err(unavailable)?;
    let mut quotas = txn.open_table(QUOTAS).map_err(unavailable)?;
    quotas.remove(id.number()).map_err(unavailable)?;
    remove_markers(txn, id)
}

/// Forgets a deleted token's once-markers.
fn remove_markers(txn: &redb::WriteTransaction, id: TokenId) -> StoreResult<()> {
    txn.open_table(MARKERS)
        .map_err(unavailable)?
        .retain_in((id.number(), "")..(id.number() + 1, ""), |_, _| false)
        .map_err(unavailable)
}

fn event_count(
    table: &impl ReadableTable<(u32, u64), &'static [u8]>,
    id: TokenId,
) -> StoreResult<u64> {
    Ok(table
        .range((id.number(), 0)..=(id.number(), u64::MAX))
        .map_err(unavailable)?
        .next_back()
        .transpose()
        .map_err(unavailable)?
        .map_or(0, |(k, _)| k.value().1 + 1))
}

fn hook_state(v: (u64, u32, i64)) -> HookState {
    HookState {
        cursor: v.0,
        attempts: v.1,
        next_at_ms: v.2,
    }
}

/// The webhook worker's bookkeeping (see `super::Store::pending`).
impl EmbeddedStore {
    /// Pending token ids.
    pub fn pending(&self, limit: usize) -> StoreResult<Vec<(TokenId, i64)>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(PENDING).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(unavailable)?.take(limit) {
            let (k, _) = row.map_err(unavailable)?;
            out.extend(TokenId::new(k.value()).map(|id| (id, 0)));
        }
        Ok(out)
    }

    /// Number of events and every webhook's state.
    pub fn hook_status(&self, id: TokenId) -> StoreResult<(u64, Vec<(String, HookState)>)> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let events = txn.open_table(EVENTS).map_err(unavailable)?;
        let hooks = txn.open_table(HOOKS).map_err(unavailable)?;
        let mut states = Vec::new();
        for row in hooks
            .range((id.number(), "")..(id.number() + 1, ""))
            .map_err(unavailable)?
        {
            let (k, v) = row.map_err(unavailable)?;
            states.push((k.value().1.to_string(), hook_state(v.value())));
        }
        Ok((event_count(&events, id)?, states))
    }

    /// One webhook's state.
    pub fn hook_state(&self, id: TokenId, webhook: &str) -> StoreResult<HookState> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let hooks = txn.open_table(HOOKS).map_err(unavailable)?;
        Ok(hooks
            .get((id.number(), webhook))
            .map_err(unavailable)?
            .map(|v| hook_state(v.value()))
            .unwrap_or_default())
    }

    /// Saves one webhook's state.
    pub fn hook_save(&self, id: TokenId, webhook: &str, s: HookState) -> StoreResult<()> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        txn.open_table(HOOKS)
            .map_err(unavailable)?
            .insert((id.number(), webhook), (s.cursor, s.attempts, s.next_at_ms))
            .map_err(unavailable)?;
        txn.commit().map_err(unavailable)
    }

    /// Events from index `from`.
    pub fn events_from(
        &self,
        id: TokenId,
        from: u64,
        max: usize,
    ) -> StoreResult<Vec<(u64, Event)>> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(EVENTS).map_err(unavailable)?;
        let mut out = Vec::new();
        for row in table
            .range((id.number(), from)..=(id.number(), u64::MAX))
            .map_err(unavailable)?
            .take(max)
        {
            let (k, v) = row.map_err(unavailable)?;
            let e = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((k.value().1, e));
        }
        Ok(out)
    }

    /// Drops `id` from the pending index if every webhook has every event; one
    /// transaction, so an event written meanwhile keeps it.
    pub fn settle(&self, id: TokenId, webhooks: &[String]) -> StoreResult<bool> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let events = txn.open_table(EVENTS).map_err(unavailable)?;
            let hooks = txn.open_table(HOOKS).map_err(unavailable)?;
            let n = event_count(&events, id)?;
            for w in webhooks {
                let cursor = hooks
                    .get((id.number(), w.as_str()))
                    .map_err(unavailable)?
                    .map_or(0, |v| v.value().0);
                if cursor < n {
                    return Ok(false);
                }
            }
            txn.open_table(PENDING)
                .map_err(unavailable)?
                .remove(id.number())
                .map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(true)
    }

    /// When webhook `name` was first configured.
    pub fn webhook_since(&self, name: &str, now: jiff::Timestamp) -> StoreResult<jiff::Timestamp> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        let ms = {
            let mut t = txn.open_table(SINCE).map_err(unavailable)?;
            let cur = t.get(name).map_err(unavailable)?.map(|v| v.value());
            match cur {
                Some(ms) => ms,
                None => {
                    let ms = now.as_millisecond();
                    t.insert(name, ms).map_err(unavailable)?;
                    ms
                }
            }
        };
        txn.commit().map_err(unavailable)?;
        Ok(jiff::Timestamp::from_millisecond(ms).unwrap_or(now))
    }
}
