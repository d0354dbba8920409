//! Token operations shared by the admin API, bootstrap and tests: validation,
//! creation with a fresh secret, optimistic-concurrency edits, deletion. Every change
//! goes to the store first, then to this process's cache.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::config::{Config, PERMISSION_ALL};
use crate::error::ApiError;
use crate::events;
use crate::store::{Bootstrapped, Event, EventWrite, Store, StoreError, TokenCache};
use crate::token::{Secret, Token, TokenId};

/// Longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Longest external id, in characters.
pub const MAX_EXTERNAL_ID_CHARS: usize = 64;
/// Attempts at a free random id before giving up (a collision needs ~1e9 tokens).
const ID_ATTEMPTS: usize = 16;
/// Shortest `expires_in` (expiry is kept in whole seconds).
pub const MIN_EXPIRES_IN: Duration = Duration::from_secs(1);
/// Attempts at a compare-and-swap edit under contention.
const CAS_ATTEMPTS: usize = 32;

/// When a token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// Never.
    #[default]
    Perpetual,
    /// At a fixed time.
    At(Timestamp),
    /// After a period from now.
    In(Duration),
}

impl Expiry {
    /// The API field this expiry came from, for error messages.
    pub fn field(self) -> &'static str {
        match self {
            Expiry::At(_) => "expires_at",
            Expiry::Perpetual | Expiry::In(_) => "expires_in",
        }
    }

    /// The expiry time (whole seconds, as the API shows it and the cache compares it)
    /// and the validity period it stands for, checked to be in the future.
    pub fn resolve(
        self,
        now: Timestamp,
        field: &str,
    ) -> Result<(Option<Timestamp>, Option<i64>), ApiError> {
        match self {
            Expiry::Perpetual => Ok((None, None)),
            Expiry::At(t) => {
                let t = whole_seconds(t);
                if t <= now {
                    return Err(ApiError::Validation(format!(
                        "{field}: must be in the future"
                    )));
                }
                Ok((Some(t), Some(t.as_second() - now.as_second())))
            }
            Expiry::In(d) => {
                // Expiry is kept in whole seconds: "500ms" would truncate to now, i.e.
                // a token that is already expired.
                if d < MIN_EXPIRES_IN {
                    return Err(ApiError::Validation(format!(
                        "{field}: must be at least 1s (expiry is kept in whole seconds)"
                    )));
                }
                let too_long = || {
                    ApiError::Validation(format!(
                        "{field}: too long (the expiry would be after 9999-12-30)"
                    ))
                };
                let signed = SignedDuration::try_from(d).map_err(|_| too_long())?;
                let at = now.checked_add(signed).map_err(|_| too_long())?;
                Ok((Some(whole_seconds(at)), Some(d.as_secs() as i64)))
            }
        }
    }
}

/// The expiry of an empty renew: `validity_secs` from `now`, in whole seconds like every
/// stored expiry (the cache compares whole seconds, the API status the exact time; a
/// fraction would make them disagree for up to a second). `NOT_RENEWABLE` without a
/// positive period.
pub fn renewed_expiry(
    now: Timestamp,
    validity_secs: Option<i64>,
) -> Result<(Option<Timestamp>, Option<i64>), ApiError> {
    let secs = validity_secs
        .filter(|s| *s > 0)
        .ok_or(ApiError::NotRenewable)?;
    // A token created to expire in 9999 has a validity period that no renewal can add
    // again: say so, rather than calling it perpetual.
    let at = now
        .checked_add(SignedDuration::from_secs(secs))
        .map_err(|_| {
            ApiError::Validation(format!(
                "expires_in: renewing for the token's last validity period ({} days) would \
                 end after 9999-12-30; give expires_at or expires_in",
                secs / 86_400
            ))
        })?;
    Ok((Some(whole_seconds(at)), Some(secs)))
}

/// `t` without its fraction of a second.
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// What a new token is made of.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// External id.
    pub external_id: Option<String>,
    /// Extension name (`None` = `custom`).
    pub extension: Option<String>,
    /// Module names or `["all"]`.
    pub permissions: Vec<String>,
    /// Expiry.
    pub expiry: Expiry,
    /// Rate limits (checked by the caller).
    pub rate_limits: Vec<crate::policy::RateLimit>,
    /// Quota (checked by the caller).
    pub quota: Option<crate::policy::Quota>,
    /// Allowed client networks.
    pub allowed_ips: Vec<crate::policy::Cidr>,
}

/// Checks a name.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.trim().is_empty() {
        return Err(ApiError::Validation(format!(
            "name: must be 1-{MAX_NAME_CHARS} characters and not blank"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::Validation(
            "name: must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Checks a description.
pub fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::Validation(format!(
            "description: must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    if d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::Validation(
            "description: must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Checks an external id: 1-64 printable ASCII characters, no spaces.
pub fn check_external_id(e: &str) -> Result<(), ApiError> {
    if e.is_empty() || e.len() > MAX_EXTERNAL_ID_CHARS || !e.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::Validation(format!(
            "external_id: must be 1-{MAX_EXTERNAL_ID_CHARS} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// Checks an extension name against the catalogue.
pub fn check_extension(e: &str, config: &Config) -> Result<(), ApiError> {
    if config.extensions.iter().any(|x| x.name == e) {
        Ok(())
    } else {
        Err(ApiError::Validation(format!(
            "extension: unknown extension {} (see GET /v1/extensions)",
            crate::error::shown(e)
        )))
    }
}

/// The preset permissions of extension `name`, if it fixes them (SPEC §8).
pub fn preset<'c>(config: &'c Config, name: &str) -> Option<&'c Vec<String>> {
    config
        .extensions
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.permissions.as_ref())
}

/// Whether two permission lists hold the same entries (order aside).
pub fn same_permissions(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Checks permissions (SPEC §1, §8): configured module names (each once), in full or
/// `:read` form, `all` alone, or `all:read` with full module permissions. `integrations`
/// (the admin permission) is always accepted.
pub fn check_permissions(p: &[String], config: &Config) -> Result<(), ApiError> {
    let modules: Vec<&str> = config.modules.iter().map(|m| m.name.as_str()).collect();
    crate::policy::check_permission_list(p, &modules)
        .map_err(|e| ApiError::Validation(format!("permissions: {e}")))
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "token store operation failed");
    ApiError::StoreUnavailable
}

/// Token operations on one store and one cache.
#[derive(Clone)]
pub struct Tokens {
    store: Store,
    cache: Arc<TokenCache>,
    /// Runs between a successful store write of `modify` and its cache update, so a
    /// test can interleave a concurrent delete exactly there.
    #[cfg(test)]
    after_replace: Option<Arc<dyn Fn(TokenId) + Send + Sync>>,
    /// Runs between `delete_checked`'s check and its store write.
    #[cfg(test)]
    before_delete: Option<Arc<dyn Fn(TokenId) + Send + Sync>>,
}

impl Tokens {
    /// Operations on `store`, keeping `cache` current.
    pub fn new(store: Store, cache: Arc<TokenCache>) -> Tokens {
        Tokens {
            store,
            cache,
            #[cfg(test)]
            after_replace: None,
            #[cfg(test)]
            before_delete: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a token; returns it with its secret (to be shown once).
    pub async fn create(
        &self,
        new: NewToken,
        created_by: Option<TokenId>,
        config: &Config,
        now: Timestamp,
    ) -> Result<(Token, Secret), ApiError> {
        check_name(&new.name)?;
        check_description(&new.description)?;
        if let Some(e) = &new.external_id {
            check_external_id(e)?;
        }
        let extension = new.extension.unwrap_or_else(|| "custom".into());
        check_extension(&extension, config)?;
        check_permissions(&new.permissions, config)?;
        let (expires_at, validity_secs) = new.expiry.resolve(now, new.expiry.field())?;
        let secret = Secret::generate();
        let mut token = Token {
            description: new.description,
            external_id: new.external_id,
            extension,
            expires_at,
            validity_secs,
            created_by,
            permissions: new.permissions,
            rate_limits: new.rate_limits,
            quota: new.quota,
            allowed_ips: new.allowed_ips,
            ..Token::new(&new.name, &[], secret.hash(), now)
        };
        let mut fields = vec!["name", "description", "extension", "permissions"];
        if token.external_id.is_some() {
            fields.push("external_id");
        }
        if token.expires_at.is_some() {
            fields.push("expires_at");
        }
        for (set, name) in [
            (!token.rate_limits.is_empty(), "rate_limits"),
            (token.quota.is_some(), "quota"),
            (!token.allowed_ips.is_empty(), "allowed_ips"),
        ] {
            if set {
                fields.push(name);
            }
        }
        let fields: Vec<String> = fields.into_iter().map(String::from).collect();
        for _ in 0..ID_ATTEMPTS {
            // The events carry the id, so they are made per attempt.
            let mut evs = vec![events::event(
                "created",
                created_by,
                fields.clone(),
                &token,
                now,
            )];
            evs.extend(events::expiry_event(
                &token,
                now,
                config.events.expiring_before,
            ));
            if self
                .store
                .insert_with(&token, &evs)
                .await
                .map_err(store_error)?
            {
                self.cache.put(&token, config);
                return Ok((token, secret));
            }
            token.id = TokenId::random();
        }
        tracing::error!("no free token id after {ID_ATTEMPTS} attempts");
        Err(ApiError::Internal)
    }

    /// One token.
    pub async fn get(&self, id: TokenId) -> Result<Token, ApiError> {
        self.store
            .get(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::TokenNotFound(id.to_string()))
    }

    /// Every token.
    pub async fn list(&self) -> Result<Vec<Token>, ApiError> {
        self.store.list().await.map_err(store_error)
    }

    /// Applies `change` to the stored token with compare-and-swap, retrying on
    /// concurrent edits; bumps `version` and `updated_at`. Records no event (tests and
    /// internal fix-ups); the admin API uses [`Tokens::change`].
    pub async fn modify(
        &self,
        id: TokenId,
        config: &Config,
        now: Timestamp,
        mut change: impl FnMut(&mut Token) -> Result<(), ApiError>,
    ) -> Result<Token, ApiError> {
        self.change(id, None, "", config, now, |t| {
            change(t).map(|()| Vec::new())
        })
        .await
    }

    /// [`Tokens::modify`] that records the event `action` by `actor` in the same store
    /// write. `change` returns the fields it changed; an `updated` that changed nothing
    /// records no event (an empty `action` never does). A change that leaves the token
    /// close to its expiry also raises `token.expiring` (once per expiry time).
    pub async fn change(
        &self,
        id: TokenId,
        actor: Option<TokenId>,
        action: &str,
        config: &Config,
        now: Timestamp,
        mut change: impl FnMut(&mut Token) -> Result<Vec<String>, ApiError>,
    ) -> Result<Token, ApiError> {
        for _ in 0..CAS_ATTEMPTS {
            let mut token = self.get(id).await?;
            let expected = token.version;
            let fields = change(&mut token)?;
            token.version = expected + 1;
            token.updated_at = now;
            let mut evs: Vec<EventWrite> = Vec::new();
            if !action.is_empty() && (action != "updated" || !fields.is_empty()) {
                evs.push(events::event(action, actor, fields, &token, now));
                evs.extend(events::expiry_event(
                    &token,
                    now,
                    config.events.expiring_before,
                ));
            }
            // Taken before the write: a delete that lands between the write and the
            // cache update invalidates the id after this mark, so `fill_token` refuses
            // to put the token back (`put` would resurrect a deleted token).
            let started = self.cache.read_started();
            if self
                .store
                .replace_with(&token, expected, &evs)
                .await
                .map_err(store_error)?
            {
                #[cfg(test)]
                if let Some(hook) = &self.after_replace {
                    hook(id);
                }
                self.cache.fill_token(&token, config, started);
                return Ok(token);
            }
        }
        tracing::warn!(token = %id, "edit lost {CAS_ATTEMPTS} races in a row");
        Err(ApiError::Internal)
    }

    /// Gives every token of an extension with preset permissions exactly that preset
    /// (SPEC §8) where its permissions differ: after a reload that changed a preset, and
    /// at start-up (the file may have changed while keygate was stopped). A tightened
    /// preset thus applies to the existing tokens, not only to new ones. Each change is
    /// a `token.updated` event without an actor, naming `permissions`. Returns how many
    /// tokens were changed.
    pub async fn apply_presets(&self, config: &Config, now: Timestamp) -> Result<usize, ApiError> {
        if config.extensions.iter().all(|e| e.permissions.is_none()) {
            return Ok(0);
        }
        let differs = |t: &Token| {
            preset(config, &t.extension).filter(|p| !same_permissions(p, &t.permissions))
        };
        let mut changed = 0;
        for t in self.list().await? {
            if differs(&t).is_none() {
                continue;
            }
            let result = self
                .change(t.id, None, "updated", config, now, |t| {
                    Ok(match differs(t).cloned() {
                        Some(p) => {
                            t.permissions = p;
                            vec!["permissions".to_string()]
                        }
                        None => Vec::new(),
                    })
                })
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(token = %t.id, extension = %t.extension, "permissions set to the extension's preset");
                    changed += 1;
                }
                // Deleted meanwhile.
                Err(ApiError::TokenNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// A token's audit events, oldest first (kept after the token is deleted).
    pub async fn events(&self, id: TokenId) -> Result<Vec<Event>, ApiError> {
        self.store.events(id).await.map_err(store_error)
    }

    /// Deletes a token if `check` accepts it, atomically: the delete only happens if
    /// the token is still the version `check` saw (retried like [`Tokens::modify`]), so
    /// a concurrent edit cannot slip in between the check and the delete. Records
    /// `token.deleted` by `actor` in the same write.
    pub async fn delete_checked(
        &self,
        id: TokenId,
        actor: Option<TokenId>,
        mut check: impl FnMut(&Token) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        for _ in 0..CAS_ATTEMPTS {
            let token = self.get(id).await?;
            check(&token)?;
            #[cfg(test)]
            if let Some(hook) = &self.before_delete {
                hook(id);
            }
            let now = Timestamp::now();
            let evs = [events::event("deleted", actor, Vec::new(), &token, now)];
            if self
                .store
                .delete_if_version_with(id, token.version, &evs)
                .await
                .map_err(store_error)?
            {
                self.cache.remove(id);
                return Ok(());
            }
        }
        tracing::warn!(token = %id, "delete lost {CAS_ATTEMPTS} races in a row");
        Err(ApiError::Internal)
    }

    /// Deletes a token, unchecked.
    pub async fn delete(&self, id: TokenId) -> Result<(), ApiError> {
        let existed = self.store.delete(id).await.map_err(store_error)?;
        self.cache.remove(id);
        if existed {
            Ok(())
        } else {
            Err(ApiError::TokenNotFound(id.to_string()))
        }
    }

    /// Creates the bootstrap admin token when the store holds no active token with the
    /// admin permission, and writes `<id>:<secret>` to `key_file` (mode 0600).
    /// Returns the new token's id, or `None` when an admin already existed.
    pub async fn bootstrap(
        &self,
        key_file: &Path,
        config: &Config,
        now: Timestamp,
    ) -> Result<Option<TokenId>, String> {
        let secret = Secret::generate();
        let mut token = Token {
            description: "Created at first start; rotate or replace it.".into(),
            ..Token::new("bootstrap admin", &[PERMISSION_ALL], secret.hash(), now)
        };
        let mut attempts = 0;
        let fields: Vec<String> = ["name", "description", "extension", "permissions"]
            .map(String::from)
            .to_vec();
        loop {
            let evs = [events::event("created", None, fields.clone(), &token, now)];
            match self
                .store
                .insert_bootstrap_with(&token, &evs)
                .await
                .map_err(|e| e.to_string())?
            {
                Bootstrapped::Inserted => break,
                Bootstrapped::AdminExists => return Ok(None),
                Bootstrapped::IdTaken if attempts < ID_ATTEMPTS => {
                    attempts += 1;
                    token.id = TokenId::random();
                }
                Bootstrapped::IdTaken => {
                    return Err(format!("no free token id after {ID_ATTEMPTS} attempts"));
                }
            }
        }
        if let Err(e) = write_key_file(key_file, &format!("{}:{}", token.id, secret.expose())) {
            // Without the file nobody could use the token, and no other would be made.
            let gone = [events::event("deleted", None, Vec::new(), &token, now)];
            let _ = self
                .store
                .delete_if_version_with(token.id, token.version, &gone)
                .await;
            return Err(format!("cannot write {}: {e}", key_file.display()));
        }
        self.cache.put(&token, config);
        Ok(Some(token.id))
    }
}

/// Writes `content` to `path` with mode 0600, creating the parent directory.
fn write_key_file(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        // An existing file keeps its old mode on open; tighten it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    /// An embedded store with one module `a` and one token permitted for it.
    struct Fixture {
        _dir: tempfile::TempDir,
        embedded: Arc<EmbeddedStore>,
        config: Config,
        cache: Arc<TokenCache>,
        tokens: Tokens,
        token: Token,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let embedded = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
            let config = Config::parse(
                "[[modules]]\nname = \"a\"\nprefixes = [\"/a\"]\nupstream = \"http://127.0.0.1:1\"\n",
                Path::new("t.toml"),
                |_| None,
            )
            .unwrap();
            let cache = Arc::new(TokenCache::new(true));
            let tokens = Tokens::new(Store::Embedded(Arc::clone(&embedded)), Arc::clone(&cache));
            let new = NewToken {
                name: "t".into(),
                description: String::new(),
                external_id: None,
                extension: None,
                permissions: vec!["a".into()],
                expiry: Expiry::Perpetual,
                rate_limits: Vec::new(),
                quota: None,
                allowed_ips: Vec::new(),
            };
            let (token, _) = tokens
                .create(new, None, &config, Timestamp::now())
                .await
                .unwrap();
            Fixture {
                _dir: dir,
                embedded,
                config,
                cache,
                tokens,
                token,
            }
        }
    }

    /// Regression (review #5): delete checked the escalation rule on one read and then
    /// deleted whatever was stored, so a token widened in between (by an `all` admin)
    /// was deleted by a caller that no longer holds all its permissions.
    #[tokio::test]
    async fn delete_check_is_atomic_with_the_delete() {
        let Fixture {
            _dir,
            embedded,
            mut tokens,
            token,
            ..
        } = Fixture::new().await;
        // Another admin widens the token to `all` right after the first check passed.
        let (store, once) = (Arc::clone(&embedded), Arc::new(std::sync::Once::new()));
        tokens.before_delete = Some(Arc::new(move |id| {
            once.call_once(|| {
                let mut t = store.get(id).unwrap().unwrap();
                t.permissions = vec![PERMISSION_ALL.into()];
                t.version += 1;
                assert!(store.replace(&t, t.version - 1, &[]).unwrap());
            });
        }));
        let only_a = |t: &Token| {
            if t.permissions.iter().all(|p| p == "a") {
                Ok(())
            } else {
                Err(ApiError::PermEscalation("wider".into()))
            }
        };
        let e = tokens
            .delete_checked(token.id, None, only_a)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::PermEscalation(_)), "{e:?}");
        assert!(embedded.get(token.id).unwrap().is_some(), "deleted anyway");
    }

    /// Regression (review #3): `modify` re-cached with `put` after its store write, so
    /// a delete committed and uncached in between was undone in the cache and the
    /// deleted token kept authenticating.
    #[tokio::test]
    async fn modify_racing_a_delete_does_not_resurrect_the_token() {
        let Fixture {
            _dir,
            embedded,
            config,
            cache,
            mut tokens,
            token,
        } = Fixture::new().await;
        assert!(cache.get(token.id).is_some());
        // The delete of another admin request, committed and uncached while this edit
        // sits between its own store write and its cache update.
        let (store, c) = (Arc::clone(&embedded), Arc::clone(&cache));
        tokens.after_replace = Some(Arc::new(move |id| {
            assert!(store.delete(id).unwrap());
            c.remove(id);
        }));
        tokens
            .modify(token.id, &config, Timestamp::now(), |t| {
                t.disabled = true;
                Ok(())
            })
            .await
            .unwrap();
        assert!(
            cache.get(token.id).is_none(),
            "the deleted token is back in the cache"
        );
    }

    /// Regression (review #8): "500ms" truncated to the current second and created a
    /// token that was already expired.
    #[test]
    fn sub_second_expires_in_is_refused_not_created_expired() {
        let now = Timestamp::from_second(1_700_000_000)
            .unwrap()
            .checked_add(SignedDuration::from_millis(700))
            .unwrap();
        for d in [0, 1, 500, 999] {
            let e = Expiry::In(Duration::from_millis(d))
                .resolve(now, "expires_in")
                .unwrap_err();
            assert_eq!(e.code(), "VALIDATION");
            assert!(e.to_string().starts_with("expires_in:"), "{e}");
        }
        let (at, validity) = Expiry::In(Duration::from_secs(1))
            .resolve(now, "expires_in")
            .unwrap();
        assert_eq!(at.unwrap().as_second(), 1_700_000_001);
        assert!(at.unwrap() > now);
        assert_eq!(validity, Some(1));
    }

    /// Regression (review #8): an empty renew stored `now + validity` with now's
    /// fraction of a second.
    #[test]
    fn empty_renew_stores_a_whole_second_expiry() {
        let now = Timestamp::from_second(1_700_000_000)
            .unwrap()
            .checked_add(SignedDuration::from_millis(700))
            .unwrap();
        let (at, validity) = renewed_expiry(now, Some(3600)).unwrap();
        let at = at.unwrap();
        assert_eq!(at, Timestamp::from_second(1_700_003_600).unwrap());
        assert_eq!(at.subsec_nanosecond(), 0);
        assert_eq!(validity, Some(3600));
        for bad in [None, Some(0), Some(-5)] {
            assert_eq!(renewed_expiry(now, bad), Err(ApiError::NotRenewable));
        }
    }

    /// Regression (#14 item 8): renewing a token created to expire in 9999 said "a
    /// perpetual token cannot be renewed".
    #[test]
    fn renew_past_year_9999_is_a_validation_error_not_perpetual() {
        let created = Timestamp::from_second(1_700_000_000).unwrap();
        let far: Timestamp = "9999-12-30T00:00:00Z".parse().unwrap();
        let validity = far.as_second() - created.as_second();
        let later = Timestamp::from_second(1_700_000_000 + 30 * 86_400).unwrap();
        let e = renewed_expiry(later, Some(validity)).unwrap_err();
        assert_eq!(e.code(), "VALIDATION", "{e}");
        assert!(e.to_string().contains("9999"), "{e}");
    }
}
