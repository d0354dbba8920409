//! The Redis store: one token table and one set of day counters shared by any number of
//! gateway instances, on standalone Redis (`redis://`) or Redis Cluster
//! (`redis+cluster://h1:p1,h2:p2`).
//!
//! Key layout (`P` = `store.key_prefix`, default `keygate:`; `docs/redis.md` has the why):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P token:{<id>}` | hash | `v` version, `j` token JSON, `lu` last use (Unix s), `m:<kind>` once-markers of raised events; a deleted token leaves `r`=1 so its id is never reused |
//! | `P events:{<id>}` | list | events (JSON), oldest first: the audit log and the webhook outbox, written by the same script as the change |
//! | `P hook:{<id>}` | hash | webhook name → `cursor attempts next_at_ms`: where that webhook stands with the token's events |
//! | `P lease:{<id>}:<webhook>` | string | the instance delivering this token's events to this webhook (TTL) |
//! | `P pending` | sorted set | ids of tokens with events not yet delivered everywhere; score = when marked (ms) |
//! | `P webhooks:since` | hash | webhook name → when first configured (ms) |
//! | `P ids` | set | ids of live tokens (the index `list` reads) |
//! | `P bootstrap-lock` | string | held (with a TTL) while one instance checks for an admin token |
//! | `P {counts}:days` | sorted set | day numbers that have counts |
//! | `P {counts}:<day>` | hash | `<id>:<class>` → count, class 0-3 = 2xx-5xx |
//! | `P {counts}:batch:<hex>` | string | marker of an applied count batch, expires after [`super::BATCH_ID_TTL`] |
//! | `P limits:{<id>}` | hash | rate-limit state: `<N>/<per_ms>:m` / `:f`, the GCRA arrival time (ms, and 1/N ms); expires after the longest `per` |
//! | `P quota:{<id>}:<day\|month>:<start>` | string | quota count of the period starting at Unix second `start`; expires a day after the period |
//! | `P quota:{<id>}:<day\|month>:<start>:refused` | string | set by the period's first refusal (the `token.quota_exceeded` event) |
//!
//! Every operation on one token touches keys of one hash slot (the `{<id>}` tag) and runs
//! as one Lua script, which also publishes the id on `P changes`, so a change and its
//! announcement are atomic. All counters share the `{counts}` tag so one `add_counts`
//! call is one script: it is applied whole or not at all, together with its batch
//! marker, so a batch sent again (its answer lost to a deadline or a dropped
//! connection after Redis applied it) is not counted twice.
//!
//! Every call has a deadline ([`OP_TIMEOUT`]). The store is marked down (cache misses
//! then answer 503 at once instead of queueing on a dead Redis) when a PING fails (the
//! health check sends one every 500 ms) or after [`FAILURES_BEFORE_DOWN`] calls in a row
//! failed; one slow or failed token read alone does not. Any success marks it up.
//!
//! On Redis Cluster one node answering says little: with a master down the keys of
//! its slots cannot be served while the others still answer PING. So the health check
//! also asks every master for `CLUSTER INFO`; unless each answers `cluster_state:ok`
//! the store counts as down (`/readyz` 503, `keygate_store_up` 0, misses 503) until
//! they do again, whatever other calls succeed meanwhile.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisFuture, RedisResult, Script, ScriptInvocation, Value};

use super::{
    BATCH_ID_TTL, BatchId, Bootstrapped, ClassCounts, Event, EventWrite, HookState, StoreError,
    StoreResult, has_active_admin,
};
use crate::config::{redis_cluster_nodes, redis_url_redacted};
use crate::limits::{Period, Policy};
use crate::token::{Token, TokenId};

/// Deadline of one store operation (connection set-up, command, answer).
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed calls in a row (with no success between) that mark the store down.
pub const FAILURES_BEFORE_DOWN: u32 = 3;
/// Deadline of establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long an instance may hold the bootstrap lock.
const BOOTSTRAP_LOCK_TTL_MS: u64 = 30_000;
/// How long an instance waits for another to finish bootstrapping.
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(35);
/// Concurrent reads when listing (cluster keys live on different nodes, so no MGET).
const LIST_CONCURRENCY: usize = 64;

/// Appends events to KEYS[2] (the token's event list), from ARGV[`start`]: a count,
/// then per event marker field ('' = none), marker value, JSON. An event whose marker
/// field in KEYS[1] already holds the value is skipped; returns how many were written.
/// Prepended to the scripts that write events, so an event and its change are one
/// script.
const PUSH_EVENTS: &str = r"
local function push_events(start)
  local n = tonumber(ARGV[start])
  local written = 0
  for e = 0, n - 1 do
    local i = start + 1 + e * 3
    local f, v = ARGV[i], ARGV[i + 1]
    if f == '' or redis.call('HGET', KEYS[1], f) ~= v then
      if f ~= '' then redis.call('HSET', KEYS[1], f, v) end
      redis.call('RPUSH', KEYS[2], ARGV[i + 2])
      written = written + 1
    end
  end
  return written
end
";

/// Insert a never-used id. KEYS: token, events. ARGV: version, json, channel, id,
/// events.
const INSERT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'j', ARGV[2])
push_events(5)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1";

/// Compare-and-swap on the version. KEYS: token, events. ARGV: expected, new version,
/// json, channel, id, events.
const REPLACE: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if (not v) or v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'j', ARGV[3])
push_events(6)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1";

/// Delete and retire. KEYS: token. ARGV: channel, id.
const DELETE: &str = r"
local existed = redis.call('HEXISTS', KEYS[1], 'j')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', '1')
redis.call('PUBLISH', ARGV[1], ARGV[2])
return existed";

/// Delete and retire if the version is still the expected one. KEYS: token, events.
/// ARGV: expected version, channel, id, events.
const DELETE_IF_VERSION: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if (not v) or v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', '1')
push_events(4)
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1";

/// Events raised by the gateway for a live token. KEYS: token, events. ARGV: expected
/// version ('' = any), events. Returns how many were written.
const RAISE: &str = r"
if redis.call('HEXISTS', KEYS[1], 'j') == 0 then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
return push_events(2)";

/// The event count and every webhook's state. KEYS: events, hook.
const HOOK_STATUS: &str = r"
return {redis.call('LLEN', KEYS[1]), redis.call('HGETALL', KEYS[2])}";

/// Take (or keep) a lease and read the state. KEYS: lease, hook. ARGV: holder, ttl ms,
/// webhook. Returns {1, state or ''} or {0, ''}.
const HOOK_LEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return {0, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, redis.call('HGET', KEYS[2], ARGV[3]) or ''}";

/// Save the state while holding the lease, extending it. KEYS: lease, hook. ARGV:
/// holder, ttl ms, webhook, state.
const HOOK_SAVE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1";

/// Drop an id from the pending index if it was marked at or before ARGV[2] (ms).
/// KEYS: pending. ARGV: id, latest mark.
const SETTLE: &str = r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) return 1 end
return 0";

/// Keep the later last-use time of a live token. KEYS: token. ARGV: Unix seconds.
const LAST_USED: &str = r"
if redis.call('HEXISTS', KEYS[1], 'j') == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'lu'))
if cur == nil or cur < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'lu', ARGV[1]) end
return 1";

/// Add counts once per batch. KEYS: days set, batch marker, then one hash per distinct
/// day. ARGV: marker TTL (s), then groups of 7: key index, day, id, 2xx, 3xx, 4xx, 5xx.
/// Returns 0 (and changes nothing) if the marker exists: that batch was applied before.
const ADD_COUNTS: &str = r"
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #ARGV, 7 do
  local k = KEYS[tonumber(ARGV[i])]
  for c = 0, 3 do redis.call('HINCRBY', k, ARGV[i + 2] .. ':' .. c, ARGV[i + 3 + c]) end
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i + 1])
end
return 1";

/// Drop whole days. KEYS: days set, then the day hashes. ARGV: the day numbers.
/// Returns the number of (token, day) rows removed.
const PRUNE: &str = r"
local rows = 0
for i = 2, #KEYS do
  rows = rows + math.floor(redis.call('HLEN', KEYS[i]) / 4)
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', KEYS[1], ARGV[i - 1])
end
return rows";

/// One request of a token with rate limits or a quota (SPEC §8), atomic: the GCRA step
/// of every limit (state `<N>/<per_ms>:m` whole ms and `:f` the fraction in 1/N ms of
/// the theoretical arrival time) and the quota count; everything is written only if
/// every limit and the quota admit it. The clock is Redis's own (TIME), so instances
/// with skewed clocks still share one limiter.
/// KEYS: limit state hash, quota counter, first-refusal marker (all `{<id>}`).
/// ARGV: limit count L, then per limit field, N, per_ms; then quota N (0 = none) and
/// the quota keys' TTL (ms).
/// Returns {verdict (0 admitted, 1 rate limited, 2 over quota), now_ms, quota used,
/// first refusal of the period (0/1), then per limit the state (ms, frac) after the
/// request if admitted, else as it was}.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local L = tonumber(ARGV[1])
local old, new = {}, {}
local ok = true
local maxper = 0
for i = 0, L - 1 do
  local f, n, per = ARGV[2 + 3 * i], tonumber(ARGV[3 + 3 * i]), tonumber(ARGV[4 + 3 * i])
  local cur = redis.call('HMGET', KEYS[1], f .. 'm', f .. 'f')
  local m, fr = tonumber(cur[1]) or 0, tonumber(cur[2]) or 0
  old[i + 1] = {m, fr}
  if m < now then m, fr = now, 0 end
  local q = math.floor(per / n)
  local nm, nf = m + q, fr + (per - q * n)
  if nf >= n then nm, nf = nm + 1, nf - n end
  local ahead = nm - now
  if ahead > per or (ahead == per and nf > 0) then ok = false end
  new[i + 1] = {nm, nf}
  if per > maxper then maxper = per end
end
local qn = tonumber(ARGV[2 + 3 * L])
local ttl = ARGV[3 + 3 * L]
local used = 0
if qn > 0 then used = tonumber(redis.call('GET', KEYS[2]) or '0') end
local out = {0, now, used, 0}
if not ok then
  out[1] = 1
elseif qn > 0 and used >= qn then
  out[1] = 2
  if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ttl) then out[4] = 1 end
end
local st = new
if out[1] ~= 0 then st = old end
for i = 1, L do
  out[3 + 2 * i] = st[i][1]
  out[4 + 2 * i] = st[i][2]
end
if out[1] == 0 then
  for i = 0, L - 1 do
    local f = ARGV[2 + 3 * i]
    redis.call('HSET', KEYS[1], f .. 'm', string.format('%.0f', new[i + 1][1]),
      f .. 'f', string.format('%.0f', new[i + 1][2]))
  end
  if L > 0 then redis.call('PEXPIRE', KEYS[1], maxper + 1000) end
  if qn > 0 then
    out[3] = redis.call('INCR', KEYS[2])
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return out";

/// Adds counts made while Redis was unreachable. KEYS: quota counter. ARGV: n, TTL (ms).
const ADD_QUOTA: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v";

/// Release a lock only if we still hold it. KEYS: lock. ARGV: our value.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// A connection to standalone Redis or to a cluster; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether Redis answered lately.
struct Health {
    started: Instant,
    up: AtomicBool,
    /// Cluster: every master answered `cluster_state:ok` at the last health check
    /// (always true for a standalone server).
    cluster_ok: AtomicBool,
    /// Calls failed since the last success.
    failures: AtomicU32,
    /// Milliseconds since `started` of the last successful call.
    last_ok_ms: AtomicU64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The Redis store.
pub struct RedisStore {
    conn: Conn,
    /// Where the change subscriber connects: one URL, or every cluster node
    /// (a PUBLISH on a cluster reaches every node, so any one of them will do).
    pubsub_urls: Vec<String>,
    prefix: String,
    channel: String,
    health: Health,
    scripts: Scripts,
    /// Woken after every write that added an event.
    pub(crate) events_written: tokio::sync::Notify,
}

struct Scripts {
    insert: Script,
    replace: Script,
    delete: Script,
    delete_if_version: Script,
    last_used: Script,
    add_counts: Script,
    prune: Script,
    unlock: Script,
    raise: Script,
    hook_status: Script,
    hook_lease: Script,
    hook_save: Script,
    settle: Script,
    admit: Script,
    add_quota: Script,
}

/// Redis's answer to one [`RedisStore::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisVerdict {
    /// 0 admitted, 1 over a rate limit, 2 over the quota.
    pub verdict: u8,
    /// Redis's clock (Unix ms).
    pub now_ms: i64,
    /// The quota count of the period (after this request if admitted).
    pub quota_used: u64,
    /// The first refusal of the token in this quota period.
    pub first_refusal: bool,
    /// Each limit's theoretical arrival time in `1/N` ms (after this request if admitted).
    pub tats: Vec<i128>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Asks every master of the cluster for `CLUSTER INFO`: all must answer, within the
/// deadline, `cluster_state:ok`.
async fn cluster_state(mut conn: ClusterConnection) -> StoreResult<()> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("INFO");
    let answer = tokio::time::timeout(OP_TIMEOUT, conn.route_command(cmd, routing))
        .await
        .map_err(|_| unavailable("redis cluster: a master did not answer CLUSTER INFO in time"))?
        .map_err(|e| unavailable(format!("redis cluster: CLUSTER INFO: {e}")))?;
    // One answer per master, keyed by its address.
    let answers: Vec<(String, Value)> = match answer {
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| (String::from_redis_value(k).unwrap_or_default(), v))
            .collect(),
        single => vec![(String::new(), single)],
    };
    if answers.is_empty() {
        return Err(unavailable("redis cluster: no master answered"));
    }
    for (node, v) in answers {
        let text = String::from_redis_value(v).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == "cluster_state:ok") {
            return Err(unavailable(format!(
                "redis cluster: node {node} does not report cluster_state:ok"
            )));
        }
    }
    Ok(())
}

impl RedisStore {
    /// Connects to `url` (`redis://`, `rediss://` or `redis+cluster://`). Keys start
    /// with `prefix`, which must not contain `{` or `}` (they would change the hash tags).
    pub async fn open(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        if prefix.contains(['{', '}']) {
            return Err(unavailable(
                "store.key_prefix must not contain '{' or '}' (they change Redis Cluster hash slots)",
            ));
        }
        let shown = redis_url_redacted(url);
        let (conn, pubsub_urls) = if url.starts_with("redis+cluster://") {
            let nodes = redis_cluster_nodes(url).map_err(unavailable)?;
            let client = redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(OP_TIMEOUT)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(|e| unavailable(format!("{shown}: {e}")))?;
            let conn = tokio::time::timeout(OP_TIMEOUT * 5, client.get_async_connection())
                .await
                .map_err(|_| unavailable(format!("{shown}: connecting timed out")))?
                .map_err(|e| unavailable(format!("{shown}: {e}")))?;
            (Conn::Cluster(conn), nodes)
        } else {
            let client =
                redis::Client::open(url).map_err(|e| unavailable(format!("{shown}: {e}")))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(OP_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(200));
            let conn = tokio::time::timeout(
                OP_TIMEOUT * 5,
                ConnectionManager::new_with_config(client, config),
            )
            .await
            .map_err(|_| unavailable(format!("{shown}: connecting timed out")))?
            .map_err(|e| unavailable(format!("{shown}: {e}")))?;
            (Conn::Single(conn), vec![url.to_string()])
        };
        let store = RedisStore {
            conn,
            pubsub_urls,
            prefix: prefix.to_string(),
            channel: format!("{prefix}changes"),
            health: Health {
                started: Instant::now(),
                up: AtomicBool::new(true),
                cluster_ok: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                last_ok_ms: AtomicU64::new(0),
            },
            scripts: Scripts {
                insert: Script::new(&format!("{PUSH_EVENTS}{INSERT}")),
                replace: Script::new(&format!("{PUSH_EVENTS}{REPLACE}")),
                delete: Script::new(DELETE),
                delete_if_version: Script::new(&format!("{PUSH_EVENTS}{DELETE_IF_VERSION}")),
                last_used: Script::new(LAST_USED),
                add_counts: Script::new(ADD_COUNTS),
                prune: Script::new(PRUNE),
                unlock: Script::new(UNLOCK),
                raise: Script::new(&format!("{PUSH_EVENTS}{RAISE}")),
                hook_status: Script::new(HOOK_STATUS),
                hook_lease: Script::new(HOOK_LEASE),
                hook_save: Script::new(HOOK_SAVE),
                settle: Script::new(SETTLE),
                admit: Script::new(ADMIT),
                add_quota: Script::new(ADD_QUOTA),
            },
            events_written: tokio::sync::Notify::new(),
        };
        store.ping().await?;
        Ok(store)
    }

    /// The channel on which every change is announced (message = token id).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// URLs a change subscriber may connect to, in order of preference.
    pub fn pubsub_urls(&self) -> &[String] {
        &self.pubsub_urls
    }

    fn token_key(&self, id: TokenId) -> String {
        format!("{}token:{{{}}}", self.prefix, id.number())
    }

    fn events_key(&self, id: TokenId) -> String {
        format!("{}events:{{{}}}", self.prefix, id.number())
    }

    fn hook_key(&self, id: TokenId) -> String {
        format!("{}hook:{{{}}}", self.prefix, id.number())
    }

    fn lease_key(&self, id: TokenId, webhook: &str) -> String {
        format!("{}lease:{{{}}}:{webhook}", self.prefix, id.number())
    }

    fn pending_key(&self) -> String {
        format!("{}pending", self.prefix)
    }

    /// The rate-limit state of a token (its `{<id>}` slot).
    fn limits_key(&self, id: TokenId) -> String {
        format!("{}limits:{{{}}}", self.prefix, id.number())
    }

    /// A token's quota count for the period of `kind` starting at Unix second `start`.
    fn quota_key(&self, id: TokenId, period: Period, start: i64) -> String {
        format!(
            "{}quota:{{{}}}:{}:{start}",
            self.prefix,
            id.number(),
            period.as_str()
        )
    }

    fn ids_key(&self) -> String {
        format!("{}ids", self.prefix)
    }

    fn days_key(&self) -> String {
        format!("{}{{counts}}:days", self.prefix)
    }

    fn day_key(&self, day: i32) -> String {
        format!("{}{{counts}}:{day}", self.prefix)
    }

    fn batch_key(&self, batch: BatchId) -> String {
        format!("{}{{counts}}:batch:{batch}", self.prefix)
    }

    /// Runs one Redis call with the deadline and records whether Redis answered.
    async fn call<T>(&self, f: impl Future<Output = RedisResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(Ok(v)) => {
                self.mark_ok();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.mark_failed();
                Err(unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                self.mark_failed();
                Err(unavailable("redis: no answer within the deadline"))
            }
        }
    }

    /// Sends one command.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        let mut c = self.conn.clone();
        self.call(cmd.query_async(&mut c)).await
    }

    /// Runs one script.
    async fn script<T: FromRedisValue>(&self, inv: ScriptInvocation<'_>) -> StoreResult<T> {
        let mut c = self.conn.clone();
        self.call(async move { inv.invoke_async(&mut c).await })
            .await
    }

    fn mark_ok(&self) {
        self.health.failures.store(0, Ordering::Relaxed);
        self.health
            .last_ok_ms
            .store(self.health.now_ms(), Ordering::Relaxed);
        if !self.health.up.swap(true, Ordering::Relaxed) {
            tracing::info!("redis store reachable again");
        }
    }

    /// One failed call: down only after [`FAILURES_BEFORE_DOWN`] in a row, so one slow
    /// read (say, of an id an attacker made up) does not refuse every uncached token.
    fn mark_failed(&self) {
        let failures = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_BEFORE_DOWN {
            self.mark_down();
        }
    }

    fn mark_down(&self) {
        if self.health.up.swap(false, Ordering::Relaxed) {
            tracing::warn!("redis store unreachable");
        }
    }

    /// Whether Redis is taken to be reachable: no failed PING and fewer than
    /// [`FAILURES_BEFORE_DOWN`] failed calls since the last success.
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed) && self.health.cluster_ok.load(Ordering::Relaxed)
    }

    /// How long ago Redis last answered.
    pub fn since_last_ok(&self) -> Duration {
        let now = self.health.now_ms();
        let last = self.health.last_ok_ms.load(Ordering::Relaxed);
        Duration::from_millis(now.saturating_sub(last))
    }

    /// PING (and on a cluster `CLUSTER INFO` on every master); a failure marks the
    /// store down at once (the health check decides).
    pub async fn ping(&self) -> StoreResult<()> {
        let answer = self.query::<()>(&redis::cmd("PING")).await;
        if answer.is_err() {
            self.mark_down();
            return answer;
        }
        if let Conn::Cluster(c) = &self.conn {
            let state = cluster_state(c.clone()).await;
            let ok = state.is_ok();
            if self.health.cluster_ok.swap(ok, Ordering::Relaxed) != ok {
                match &state {
                    Ok(()) => tracing::info!("redis cluster: every master serves its slots again"),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis cluster cannot serve every slot; store marked down")
                    }
                }
            }
            state?;
        }
        Ok(())
    }

    /// One token.
    pub async fn get(&self, id: TokenId) -> StoreResult<Option<Token>> {
        let (json, lu): (Option<String>, Option<i64>) = self
            .query(
                redis::cmd("HMGET")
                    .arg(self.token_key(id))
                    .arg("j")
                    .arg("lu"),
            )
            .await?;
        json.map(|j| decode(&j, lu)).transpose()
    }

    /// Every token: the id index, then each token (skipping ids deleted meanwhile).
    pub async fn list(&self) -> StoreResult<Vec<Token>> {
        let ids: Vec<u32> = self
            .query(redis::cmd("SMEMBERS").arg(self.ids_key()))
            .await?;
        let results: Vec<StoreResult<Option<Token>>> =
            futures_util::stream::iter(ids.into_iter().filter_map(TokenId::new))
                .map(|id| self.get(id))
                .buffer_unordered(LIST_CONCURRENCY)
                .collect()
                .await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            if let Some(t) = r? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Inserts a token whose id was never used, with its events; announces it.
    pub async fn insert(&self, token: &Token, events: &[EventWrite]) -> StoreResult<bool> {
        let json = encode(token)?;
        // Index first: an id in the index without a token is skipped by `list`,
        // a token missing from the index would be invisible to it.
        self.query::<()>(
            redis::cmd("SADD")
                .arg(self.ids_key())
                .arg(token.id.number()),
        )
        .await?;
        self.mark_pending(token.id, events).await?;
        let mut inv = self.scripts.insert.prepare_invoke();
        inv.key(self.token_key(token.id))
            .key(self.events_key(token.id))
            .arg(token.version)
            .arg(json)
            .arg(&self.channel)
            .arg(token.id.to_string());
        event_args(&mut inv, events)?;
        let inserted: i64 = self.script(inv).await?;
        Ok(inserted == 1)
    }

    /// Compare-and-swap on `version`, with the change's events; announces the change.
    pub async fn replace(
        &self,
        token: &Token,
        expected_version: u64,
        events: &[EventWrite],
    ) -> StoreResult<bool> {
        let json = encode(token)?;
        self.mark_pending(token.id, events).await?;
        let mut inv = self.scripts.replace.prepare_invoke();
        inv.key(self.token_key(token.id))
            .key(self.events_key(token.id))
            .arg(expected_version)
            .arg(token.version)
            .arg(json)
            .arg(&self.channel)
            .arg(token.id.to_string());
        event_args(&mut inv, events)?;
        let replaced: i64 = self.script(inv).await?;
        Ok(replaced == 1)
    }

    /// Marks `id` pending before a script writes `events` (a different hash slot, so
    /// not in the same script): an id marked without events costs the worker a look;
    /// events without the mark would never be delivered.
    async fn mark_pending(&self, id: TokenId, events: &[EventWrite]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.query::<()>(
            redis::cmd("ZADD")
                .arg(self.pending_key())
                .arg(jiff::Timestamp::now().as_millisecond())
                .arg(id.number()),
        )
        .await
    }

    /// Deletes a token and retires its id; announces it.
    pub async fn delete(&self, id: TokenId) -> StoreResult<bool> {
        let mut inv = self.scripts.delete.prepare_invoke();
        inv.key(self.token_key(id))
            .arg(&self.channel)
            .arg(id.to_string());
        let existed: i64 = self.script(inv).await?;
        // The token is gone already; a stale index entry only costs `list` one read.
        if let Err(e) = self
            .query::<()>(redis::cmd("SREM").arg(self.ids_key()).arg(id.number()))
            .await
        {
            tracing::warn!(token = %id, error = %e, "deleted token left in the id index");
        }
        Ok(existed == 1)
    }

    /// Deletes a token and retires its id if its version is still `expected_version`,
    /// with the delete's events; announces it.
    pub async fn delete_if_version(
        &self,
        id: TokenId,
        expected_version: u64,
        events: &[EventWrite],
    ) -> StoreResult<bool> {
        self.mark_pending(id, events).await?;
        let mut inv = self.scripts.delete_if_version.prepare_invoke();
        inv.key(self.token_key(id))
            .key(self.events_key(id))
            .arg(expected_version)
            .arg(&self.channel)
            .arg(id.to_string());
        event_args(&mut inv, events)?;
        let deleted: i64 = self.script(inv).await?;
        if deleted == 1
            && let Err(e) = self
                .query::<()>(redis::cmd("SREM").arg(self.ids_key()).arg(id.number()))
                .await
        {
            tracing::warn!(token = %id, error = %e, "deleted token left in the id index");
        }
        Ok(deleted == 1)
    }

    /// Inserts `token` unless an active admin token exists. Instances serialise on a
    /// lock key with a TTL, so when several start together only one creates a token.
    pub async fn insert_bootstrap(
        &self,
        token: &Token,
        events: &[EventWrite],
    ) -> StoreResult<Bootstrapped> {
        let lock = format!("{}bootstrap-lock", self.prefix);
        let mut holder = [0u8; 16];
        getrandom::fill(&mut holder).map_err(unavailable)?;
        let holder = hex::encode(holder);
        let deadline = Instant::now() + BOOTSTRAP_WAIT;
        loop {
            let got: Option<String> = self
                .query(
                    redis::cmd("SET")
                        .arg(&lock)
                        .arg(&holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(BOOTSTRAP_LOCK_TTL_MS),
                )
                .await?;
            if got.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(unavailable(
                    "another instance holds the bootstrap lock for too long",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = async {
            let all = self.list().await?;
            if has_active_admin(&all, token.created_at) {
                return Ok(Bootstrapped::AdminExists);
            }
            Ok(if self.insert(token, events).await? {
                Bootstrapped::Inserted
            } else {
                Bootstrapped::IdTaken
            })
        }
        .await;
        let mut inv = self.scripts.unlock.prepare_invoke();
        inv.key(&lock).arg(&holder);
        // If this fails the lock expires by itself.
        let _ = self.script::<i64>(inv).await;
        result
    }

    /// Adds day counts: one script over the `{counts}` slot, so all or nothing, and at
    /// most once per batch id; `false` if the batch was applied before.
    pub async fn add_counts(
        &self,
        batch: BatchId,
        rows: &[(TokenId, i32, ClassCounts)],
    ) -> StoreResult<bool> {
        if rows.is_empty() {
            return Ok(true);
        }
        let mut days: Vec<i32> = rows.iter().map(|b| b.1).collect();
        days.sort_unstable();
        days.dedup();
        let mut inv = self.scripts.add_counts.prepare_invoke();
        inv.key(self.days_key()).key(self.batch_key(batch));
        for d in &days {
            inv.key(self.day_key(*d));
        }
        inv.arg(BATCH_ID_TTL.as_secs());
        for (id, day, counts) in rows {
            // KEYS[1] and KEYS[2] are the days set and the marker, so day i is
            // KEYS[i + 3] (Lua counts from 1).
            let index = days.binary_search(day).unwrap_or(0) + 3;
            inv.arg(index)
                .arg(*day)
                .arg(id.number())
                .arg(counts.as_slice());
        }
        self.script::<i64>(inv).await.map(|applied| applied == 1)
    }

    /// Day counts of one token in `from..=to`, oldest first.
    pub async fn counts(
        &self,
        id: TokenId,
        from: i32,
        to: i32,
    ) -> StoreResult<Vec<(i32, ClassCounts)>> {
        if from > to {
            return Ok(Vec::new());
        }
        let days: Vec<i32> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.days_key())
                    .arg(from)
                    .arg(to),
            )
            .await?;
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let n = id.number();
        let mut pipe = redis::pipe();
        for d in &days {
            pipe.cmd("HMGET")
                .arg(self.day_key(*d))
                .arg(format!("{n}:0"))
                .arg(format!("{n}:1"))
                .arg(format!("{n}:2"))
                .arg(format!("{n}:3"));
        }
        let mut c = self.conn.clone();
        let rows: Vec<[Option<u64>; 4]> = self
            .call(async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(days
            .into_iter()
            .zip(rows)
            .filter(|(_, r)| r.iter().any(Option::is_some))
            .map(|(d, r)| (d, r.map(|v| v.unwrap_or(0))))
            .collect())
    }

    /// Deletes every day older than `before`; returns the (token, day) rows removed.
    pub async fn prune_counts(&self, before: i32) -> StoreResult<u64> {
        let days: Vec<i32> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.days_key())
                    .arg("-inf")
                    .arg(format!("({before}")),
            )
            .await?;
        if days.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.prune.prepare_invoke();
        inv.key(self.days_key());
        for d in &days {
            inv.key(self.day_key(*d)).arg(*d);
        }
        self.script(inv).await
    }

    /// Records last-use times (the later wins); tokens deleted meanwhile get none.
    /// Each token is its own script (own slot); repeating a batch is harmless.
    pub async fn set_last_used(&self, updates: &[(TokenId, jiff::Timestamp)]) -> StoreResult<()> {
        // Chunks of concurrent scripts; plain Vecs of futures (no stream combinator
        // closures) keep the future Send for the spawned flusher.
        let mut results: Vec<StoreResult<i64>> = Vec::with_capacity(updates.len());
        for chunk in updates.chunks(LIST_CONCURRENCY) {
            let calls: Vec<_> = chunk
                .iter()
                .map(|(id, at)| {
                    let mut inv = self.scripts.last_used.prepare_invoke();
                    inv.key(self.token_key(*id)).arg(at.as_second());
                    self.script(inv)
                })
                .collect();
            results.extend(futures_util::future::join_all(calls).await);
        }
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// Decides on one request of a token with limits or a quota, exactly for every
    /// instance together: one Lua script (see [`ADMIT`]). `quota`: the period and its
    /// bounds (Unix s) by this instance's clock; `now_ms` sets the keys' TTL.
    pub async fn admit(
        &self,
        id: TokenId,
        policy: &Policy,
        quota: Option<(Period, i64, i64)>,
        now_ms: i64,
    ) -> StoreResult<RedisVerdict> {
        let (period, start, end) = quota.unwrap_or((Period::Day, 0, 0));
        let quota_key = self.quota_key(id, period, start);
        let mut inv = self.scripts.admit.prepare_invoke();
        inv.key(self.limits_key(id))
            .key(&quota_key)
            .key(format!("{quota_key}:refused"));
        inv.arg(policy.limits.len());
        for l in policy.limits.iter() {
            inv.arg(format!("{}/{}:", l.requests, l.per_ms))
                .arg(l.requests)
                .arg(l.per_ms);
        }
        let qn = policy
            .quota
            .filter(|_| quota.is_some())
            .map_or(0, |q| q.requests);
        inv.arg(qn).arg(quota_ttl_ms(end, now_ms));
        let out: Vec<i64> = self.script(inv).await?;
        let bad = || StoreError::Corrupt("unexpected answer of the admit script".into());
        if out.len() != 4 + 2 * policy.limits.len() {
            return Err(bad());
        }
        let tats = policy
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                i128::from(out[4 + 2 * i]) * i128::from(l.requests) + i128::from(out[5 + 2 * i])
            })
            .collect();
        Ok(RedisVerdict {
            verdict: u8::try_from(out[0]).map_err(|_| bad())?,
            now_ms: out[1],
            quota_used: u64::try_from(out[2]).unwrap_or(0),
            first_refusal: out[3] == 1,
            tats,
        })
    }

    /// Adds `n` requests admitted while Redis was unreachable to a quota period.
    pub async fn add_quota(
        &self,
        id: TokenId,
        period: Period,
        start: i64,
        n: u64,
    ) -> StoreResult<()> {
        let (_, end) = period.bounds(start);
        let mut inv = self.scripts.add_quota.prepare_invoke();
        inv.key(self.quota_key(id, period, start))
            .arg(n)
            .arg(quota_ttl_ms(end, jiff::Timestamp::now().as_millisecond()));
        self.script::<i64>(inv).await.map(|_| ())
    }

    /// A token's quota count for a period.
    pub async fn quota_used(&self, id: TokenId, period: Period, start: i64) -> StoreResult<u64> {
        let v: Option<u64> = self
            .query(redis::cmd("GET").arg(self.quota_key(id, period, start)))
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Writes gateway-raised events for a live token (once per marker), if its version
    /// is still `expected_version` (when given); how many were written.
    pub async fn raise(
        &self,
        id: TokenId,
        expected_version: Option<u64>,
        events: &[EventWrite],
    ) -> StoreResult<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        self.mark_pending(id, events).await?;
        let mut inv = self.scripts.raise.prepare_invoke();
        inv.key(self.token_key(id))
            .key(self.events_key(id))
            .arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
        event_args(&mut inv, events)?;
        let n: i64 = self.script(inv).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// A token's events, oldest first.
    pub async fn events(&self, id: TokenId) -> StoreResult<Vec<Event>> {
        let rows: Vec<String> = self
            .query(redis::cmd("LRANGE").arg(self.events_key(id)).arg(0).arg(-1))
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }
}

/// The event arguments of [`PUSH_EVENTS`].
fn event_args(inv: &mut ScriptInvocation<'_>, events: &[EventWrite]) -> StoreResult<()> {
    inv.arg(events.len());
    for e in events {
        match &e.once {
            Some(o) => inv.arg(format!("m:{}", o.kind)).arg(&o.value),
            None => inv.arg("").arg(""),
        };
        inv.arg(e.json()?);
    }
    Ok(())
}

/// The webhook worker's bookkeeping (see `super::Store::pending`).
impl RedisStore {
    /// Pending token ids, longest pending first.
    pub async fn pending(&self, limit: usize) -> StoreResult<Vec<(TokenId, i64)>> {
        let ids: Vec<(u32, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.pending_key())
                    .arg(0)
                    .arg(limit.saturating_sub(1))
                    .arg("WITHSCORES"),
            )
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|(id, mark)| TokenId::new(id).map(|id| (id, mark as i64)))
            .collect())
    }

    /// Number of events and every webhook's state.
    pub async fn hook_status(&self, id: TokenId) -> StoreResult<(u64, Vec<(String, HookState)>)> {
        let mut inv = self.scripts.hook_status.prepare_invoke();
        inv.key(self.events_key(id)).key(self.hook_key(id));
        let (n, fields): (u64, Vec<String>) = self.script(inv).await?;
        Ok((
            n,
            fields
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), HookState::decode(&kv[1])))
                .collect(),
        ))
    }

    /// Events from index `from`.
    pub async fn events_from(
        &self,
        id: TokenId,
        from: u64,
        max: usize,
    ) -> StoreResult<Vec<(u64, Event)>> {
        let to = from.saturating_add(max.max(1) as u64 - 1);
        let rows: Vec<String> = self
            .query(
                redis::cmd("LRANGE")
                    .arg(self.events_key(id))
                    .arg(from)
                    .arg(to),
            )
            .await?;
        rows.iter()
            .zip(from..)
            .map(|(r, i)| {
                serde_json::from_str(r)
                    .map(|e| (i, e))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Takes the lease on (`webhook`, `id`); the state, or `None` if another holds it.
    pub async fn hook_lease(
        &self,
        id: TokenId,
        webhook: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<HookState>> {
        let mut inv = self.scripts.hook_lease.prepare_invoke();
        inv.key(self.lease_key(id, webhook))
            .key(self.hook_key(id))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .arg(webhook);
        let (got, state): (i64, String) = self.script(inv).await?;
        Ok((got == 1).then(|| HookState::decode(&state)))
    }

    /// Saves the state while holding the lease.
    pub async fn hook_save(
        &self,
        id: TokenId,
        webhook: &str,
        holder: &str,
        ttl: Duration,
        state: HookState,
    ) -> StoreResult<bool> {
        let mut inv = self.scripts.hook_save.prepare_invoke();
        inv.key(self.lease_key(id, webhook))
            .key(self.hook_key(id))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .arg(webhook)
            .arg(state.encode());
        let saved: i64 = self.script(inv).await?;
        Ok(saved == 1)
    }

    /// Gives a lease back (if it is still ours; else it expires by itself).
    pub async fn hook_release(&self, id: TokenId, webhook: &str, holder: &str) {
        let mut inv = self.scripts.unlock.prepare_invoke();
        inv.key(self.lease_key(id, webhook)).arg(holder);
        let _ = self.script::<i64>(inv).await;
    }

    /// Drops `id` from the pending index if every webhook has every event and it was
    /// last marked more than `grace` ago.
    pub async fn settle(
        &self,
        id: TokenId,
        webhooks: &[String],
        grace: Duration,
    ) -> StoreResult<bool> {
        let (n, states) = self.hook_status(id).await?;
        let caught_up = webhooks.iter().all(|w| {
            states
                .iter()
                .find(|(k, _)| k == w)
                .is_some_and(|(_, s)| s.cursor >= n)
        });
        if !caught_up && n > 0 {
            return Ok(false);
        }
        let latest = jiff::Timestamp::now().as_millisecond() - grace.as_millis() as i64;
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(self.pending_key()).arg(id.number()).arg(latest);
        let removed: i64 = self.script(inv).await?;
        Ok(removed == 1)
    }

    /// When webhook `name` was first configured.
    pub async fn webhook_since(
        &self,
        name: &str,
        now: jiff::Timestamp,
    ) -> StoreResult<jiff::Timestamp> {
        let key = format!("{}webhooks:since", self.prefix);
        self.query::<()>(
            redis::cmd("HSETNX")
                .arg(&key)
                .arg(name)
                .arg(now.as_millisecond()),
        )
        .await?;
        let ms: Option<i64> = self.query(redis::cmd("HGET").arg(&key).arg(name)).await?;
        Ok(ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .unwrap_or(now))
    }
}

/// A quota key lives until a day after its period ends (so late reads still find it).
fn quota_ttl_ms(end: i64, now_ms: i64) -> i64 {
    (end.saturating_mul(1000) - now_ms).max(0) + 86_400_000
}

fn encode(token: &Token) -> StoreResult<String> {
    // Last use lives in its own field so it never races an edit's compare-and-swap.
    let mut t = token.clone();
    t.last_used_at = None;
    serde_json::to_string(&t).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(json: &str, last_used: Option<i64>) -> StoreResult<Token> {
    let mut t: Token =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    t.last_used_at = last_used.and_then(|s| jiff::Timestamp::from_second(s).ok());
    Ok(t)
}
