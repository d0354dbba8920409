//! Token handlers of the admin API (SPEC §4): JSON in and out, the escalation and
//! self-lockout rules, paging, and the audit trail of every change.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::query::{Query, invalid};
use super::{AdminOp, Ctx, TokenOp};
use crate::config::ADMIN_MODULE;
use crate::duration;
use crate::error::{ApiError, json_response};
use crate::policy::{
    Access, Cidr, Limiters, Quota, RateLimit, access, check_quota, check_rate_limits,
    parse_allowed_ips,
};
use crate::store::Event;
use crate::token::{PreviousSecret, Secret, Status, Token, TokenId, TokenView, rfc3339};
use crate::tokens::{
    Expiry, NewToken, check_description, check_extension, check_external_id, check_name,
    check_permissions, preset, renewed_expiry, same_permissions,
};

/// Default page size of `GET /v1/tokens`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of `GET /v1/tokens`.
pub const MAX_LIMIT: usize = 1000;
/// Longest rotation grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 86_400);
/// Longest `search` value, in characters.
pub const MAX_SEARCH_CHARS: usize = 1024;
/// Largest `offset` of a token list (beyond any store's size; the document says the same).
pub const MAX_OFFSET: u64 = u32::MAX as u64;

/// Runs the handler of a `/v1/*` route (the caller is authenticated).
pub async fn dispatch(
    ctx: &Ctx<'_>,
    op: AdminOp,
    id: &str,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match op {
        AdminOp::ListTokens => list(ctx, query).await,
        AdminOp::CreateToken => create(ctx, body).await,
        AdminOp::Modules => {
            let m: Vec<ModuleView> = ctx
                .rt
                .config
                .modules
                .iter()
                .map(|m| ModuleView {
                    name: &m.name,
                    description: &m.description,
                    prefixes: &m.prefixes,
                })
                .collect();
            ok(StatusCode::OK, &m)
        }
        AdminOp::Extensions => ok(StatusCode::OK, &ctx.rt.config.extensions),
        AdminOp::Token(op) => {
            // A token id of the wrong shape names no token.
            let id = TokenId::parse(id.as_bytes())
                .ok_or_else(|| ApiError::TokenNotFound(shorten(id)))?;
            token_op(ctx, op, id, query, body).await
        }
    }
}

/// Runs the handler of a `/v1/tokens/{id}…` route.
async fn token_op(
    ctx: &Ctx<'_>,
    op: TokenOp,
    id: TokenId,
    query: Option<&str>,
    body: &Bytes,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match op {
        TokenOp::Get => {
            let t = ctx.tokens.get(id).await?;
            answer(ctx, StatusCode::OK, &t, None).await
        }
        TokenOp::Edit => edit(ctx, id, body).await,
        TokenOp::Delete => delete(ctx, id).await,
        TokenOp::Disable => set_disabled(ctx, id, true).await,
        TokenOp::Enable => set_disabled(ctx, id, false).await,
        TokenOp::Rotate => rotate(ctx, id, body).await,
        TokenOp::Renew => renew(ctx, id, body).await,
        TokenOp::Events => events(ctx, id).await,
        TokenOp::Stats => super::stats::token_stats(ctx.shared, ctx.rt, id, query).await,
    }
}

/// At most 64 characters of client text, for error messages.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

// ---------------------------------------------------------------------------
// JSON out.

/// The view of `t` with `quota_usage` filled in (exact, SPEC §8).
async fn view_with_usage<'a>(
    t: &'a Token,
    now: Timestamp,
    secret: Option<&Secret>,
    limiters: &Limiters,
    store: &crate::store::Store,
) -> TokenView<'a> {
    let usage = match &t.quota {
        Some(q) => Some(crate::policy::quota_usage(limiters, store, t.id, q, now).await),
        None => None,
    };
    TokenView::new(t, now, secret).with_quota_usage(usage)
}

/// A token as the answer's body.
async fn answer(
    ctx: &Ctx<'_>,
    status: StatusCode,
    t: &Token,
    secret: Option<&Secret>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let v = view_with_usage(t, ctx.now, secret, ctx.limiters, ctx.tokens.store()).await;
    ok(status, &v)
}

#[derive(Serialize)]
struct ModuleView<'a> {
    name: &'a str,
    description: &'a str,
    prefixes: &'a [String],
}

#[derive(Serialize)]
struct EventView {
    at: String,
    actor: Option<TokenId>,
    action: String,
    fields: Vec<String>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        EventView {
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            fields: e.fields,
        }
    }
}

fn ok(status: StatusCode, value: &impl Serialize) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        tracing::error!(error = %e, "cannot serialise an admin answer");
        ApiError::Internal
    })?;
    Ok(json_response(status, Bytes::from(body)))
}

// ---------------------------------------------------------------------------
// JSON in.

/// Parses a JSON body into `T`, naming the offending field on error.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde's derived structs also accept a JSON array; only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::Validation("body: must be a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." || path == "?" {
            "body".to_string()
        } else {
            path
        };
        ApiError::Validation(format!("{at}: {}", e.into_inner()))
    })?;
    de.end()
        .map_err(|e| ApiError::Validation(format!("body: {e}")))?;
    Ok(value)
}

/// Like [`parse_json`], but an empty body (no bytes) is `T::default()`. A body of only
/// whitespace is not JSON and is refused like any other malformed body.
fn parse_optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        parse_json(body)
    }
}

/// Absent → `None`, `null` → `Some(None)`, value → `Some(Some(v))` (PATCH semantics).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Like [`nullable`] for an RFC 3339 time, with an error that says what is accepted
/// instead of the date library's overflow text (jiff stops at 9999-12-30).
fn nullable_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Timestamp>>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(Some(None));
    };
    match s.parse::<Timestamp>() {
        Ok(t) => Ok(Some(Some(t))),
        Err(_) if s.get(..4) == Some("9999") => Err(serde::de::Error::custom(
            "too far in the future: the latest expiry is 9999-12-30T00:00:00Z \
             (omit expires_at, or set it to null on PATCH, for a perpetual token)",
        )),
        Err(_) => Err(serde::de::Error::custom(format!(
            "{} is not an RFC 3339 time such as 2030-01-31T00:00:00Z",
            crate::error::shown(&s)
        ))),
    }
}

/// A field that may be absent but not `null`.
fn not_null<T>(v: Option<Option<T>>, field: &str) -> Result<Option<T>, ApiError> {
    match v {
        Some(None) => Err(ApiError::Validation(format!("{field}: must not be null"))),
        Some(Some(v)) => Ok(Some(v)),
        None => Ok(None),
    }
}

/// Resolves the pair `expires_at` / `expires_in` (at most one).
fn expiry(
    at: Option<Option<Timestamp>>,
    within: Option<Option<String>>,
) -> Result<Option<Expiry>, ApiError> {
    let within = not_null(within, "expires_in")?;
    match (at, within) {
        (Some(_), Some(_)) => Err(ApiError::Validation(
            "expires_at, expires_in: give one of them, not both".into(),
        )),
        (Some(None), None) => Ok(Some(Expiry::Perpetual)),
        (Some(Some(t)), None) => Ok(Some(Expiry::At(t))),
        (None, Some(s)) => duration::parse(&s)
            .map(|d| Some(Expiry::In(d)))
            .map_err(|e| ApiError::Validation(format!("expires_in: {e}"))),
        (None, None) => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// The rules.

/// Whether `caller` holds every permission in `perms` (no escalation, SPEC §4).
fn holds(caller: &Token, perms: &[String]) -> bool {
    crate::policy::holds_all(&caller.permissions, perms)
}

/// The caller may grant `perms`.
fn may_grant(caller: &Token, perms: &[String]) -> Result<(), ApiError> {
    if holds(caller, perms) {
        Ok(())
    } else {
        Err(ApiError::PermEscalation(
            "permissions: a token may only grant permissions it holds itself".into(),
        ))
    }
}

/// The caller may change `target`.
fn may_change(caller: &Token, target: &Token) -> Result<(), ApiError> {
    if holds(caller, &target.permissions) {
        Ok(())
    } else {
        Err(ApiError::PermEscalation(format!(
            "token {} holds permissions the caller does not hold",
            target.id
        )))
    }
}

fn not_self(ctx: &Ctx<'_>, id: TokenId, what: &'static str) -> Result<(), ApiError> {
    if ctx.caller.token.id == id {
        Err(ApiError::SelfLockout(what))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Handlers.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    extension: Option<Option<String>>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable_time")]
    expires_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_in: Option<Option<String>>,
    #[serde(default)]
    rate_limits: Option<Vec<RateLimit>>,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    allowed_ips: Option<Vec<String>>,
}

fn preset_mismatch(extension: &str, preset: &[String]) -> ApiError {
    ApiError::Validation(format!(
        "permissions: extension {extension:?} fixes them to {preset:?}"
    ))
}

/// The policies of a create or PATCH body, checked.
fn check_policies(
    rate_limits: Option<&[RateLimit]>,
    quota: Option<&Quota>,
    allowed_ips: Option<&[String]>,
) -> Result<Option<Vec<Cidr>>, ApiError> {
    if let Some(l) = rate_limits {
        check_rate_limits(l)?;
    }
    if let Some(q) = quota {
        check_quota(q)?;
    }
    allowed_ips.map(parse_allowed_ips).transpose()
}

async fn create(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, ApiError> {
    let b: CreateBody = parse_json(body)?;
    let config = &ctx.rt.config;
    let extension = not_null(b.extension, "extension")?;
    let ext_name = extension.as_deref().unwrap_or("custom");
    check_extension(ext_name, config)?;
    let permissions = match (preset(config, ext_name), b.permissions) {
        (Some(p), None) => p.clone(),
        (Some(p), Some(given)) if !same_permissions(p, &given) => {
            return Err(preset_mismatch(ext_name, p));
        }
        (_, Some(given)) => given,
        (None, None) => {
            return Err(ApiError::Validation(
                "permissions: missing field `permissions`".into(),
            ));
        }
    };
    check_permissions(&permissions, config)?;
    may_grant(&ctx.caller.token, &permissions)?;
    let allowed_ips = check_policies(
        b.rate_limits.as_deref(),
        b.quota.as_ref(),
        b.allowed_ips.as_deref(),
    )?;
    let expiry = expiry(b.expires_at, b.expires_in)?.unwrap_or(Expiry::Perpetual);
    let new = NewToken {
        name: b.name,
        description: b.description.unwrap_or_default(),
        external_id: b.external_id,
        extension,
        permissions,
        expiry,
        rate_limits: b.rate_limits.unwrap_or_default(),
        quota: b.quota,
        allowed_ips: allowed_ips.unwrap_or_default(),
    };
    let (token, secret) = ctx
        .tokens
        .create(new, Some(ctx.caller.token.id), config, ctx.now)
        .await?;
    let mut res = answer(ctx, StatusCode::CREATED, &token, Some(&secret)).await?;
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/tokens/{}", token.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// The strings of `fields`.
fn names(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|f| f.to_string()).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    external_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    extension: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    permissions: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable_time")]
    expires_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_in: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limits: Option<Option<Vec<RateLimit>>>,
    #[serde(default, deserialize_with = "nullable")]
    quota: Option<Option<Quota>>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_ips: Option<Option<Vec<String>>>,
}

async fn edit(ctx: &Ctx<'_>, id: TokenId, body: &[u8]) -> Result<Response<Full<Bytes>>, ApiError> {
    let patch = Patch::check(ctx, id, parse_json(body)?)?;
    let mut changed: Vec<&'static str> = Vec::new();
    let actor = Some(ctx.caller.token.id);
    let token = ctx
        .tokens
        .change(id, actor, "updated", &ctx.rt.config, ctx.now, |t| {
            may_change(&ctx.caller.token, t)?;
            changed.clear();
            patch.apply_texts(t, &mut changed);
            patch.apply_permissions(ctx, id, t, &mut changed)?;
            patch.apply_policies(t, &mut changed);
            Ok(names(&changed))
        })
        .await?;
    answer(ctx, StatusCode::OK, &token, None).await
}

/// A PATCH body checked on its own: each field that is present, ready to set.
struct Patch {
    name: Option<String>,
    /// `description: null` empties it.
    description: Option<String>,
    /// `external_id: null` clears it.
    external_id: Option<Option<String>>,
    extension: Option<String>,
    permissions: Option<Vec<String>>,
    /// `null` and `[]` clear a policy.
    rate_limits: Option<Vec<RateLimit>>,
    quota: Option<Option<Quota>>,
    allowed_ips: Option<Vec<Cidr>>,
    /// The new expiry and validity (`None`: perpetual).
    expires: Option<(Option<Timestamp>, Option<i64>)>,
}

impl Patch {
    /// Checks every field of `b` that does not depend on the token's current state.
    fn check(ctx: &Ctx<'_>, id: TokenId, b: PatchBody) -> Result<Patch, ApiError> {
        let config = &ctx.rt.config;
        let name = not_null(b.name, "name")?;
        if let Some(n) = &name {
            check_name(n)?;
        }
        let description = b.description.map(Option::unwrap_or_default);
        if let Some(d) = &description {
            check_description(d)?;
        }
        if let Some(Some(e)) = &b.external_id {
            check_external_id(e)?;
        }
        let extension = not_null(b.extension, "extension")?;
        if let Some(e) = &extension {
            check_extension(e, config)?;
        }
        let permissions = not_null(b.permissions, "permissions")?;
        if let Some(p) = &permissions {
            check_permissions(p, config)?;
            may_grant(&ctx.caller.token, p)?;
            keeps_admin_access(ctx, id, p)?;
        }
        let rate_limits = b.rate_limits.map(Option::unwrap_or_default);
        let ips = b.allowed_ips.map(Option::unwrap_or_default);
        let allowed_ips = check_policies(
            rate_limits.as_deref(),
            b.quota.as_ref().and_then(Option::as_ref),
            ips.as_deref(),
        )?;
        let expires = match expiry(b.expires_at, b.expires_in)? {
            Some(e) => Some(e.resolve(ctx.now, e.field())?),
            None => None,
        };
        Ok(Patch {
            name,
            description,
            external_id: b.external_id,
            extension,
            permissions,
            rate_limits,
            quota: b.quota,
            allowed_ips,
            expires,
        })
    }

    /// Sets the extension and the permissions of `t`. Presets (SPEC §8): a token of an
    /// extension that fixes permissions has exactly those; a PATCH to that extension
    /// sets them.
    fn apply_permissions(
        &self,
        ctx: &Ctx<'_>,
        id: TokenId,
        t: &mut Token,
        changed: &mut Vec<&'static str>,
    ) -> Result<(), ApiError> {
        let ext = self.extension.as_deref().unwrap_or(&t.extension);
        let mut new_perms = self.permissions.clone();
        if let Some(p) = preset(&ctx.rt.config, ext) {
            match &new_perms {
                Some(given) if !same_permissions(p, given) => {
                    return Err(preset_mismatch(ext, p));
                }
                Some(_) => {}
                None if self.extension.as_deref().is_some_and(|e| *e != t.extension) => {
                    may_grant(&ctx.caller.token, p)?;
                    new_perms = Some(p.clone());
                }
                None => {}
            }
        }
        if let Some(e) = &self.extension
            && *e != t.extension
        {
            t.extension = e.clone();
            changed.push("extension");
        }
        if let Some(p) = new_perms
            && p != t.permissions
        {
            keeps_admin_access(ctx, id, &p)?;
            t.permissions = p;
            changed.push("permissions");
        }
        Ok(())
    }

    /// Sets the name, description and external id, where given and different.
    fn apply_texts(&self, t: &mut Token, changed: &mut Vec<&'static str>) {
        set(&mut t.name, &self.name, "name", changed);
        set(
            &mut t.description,
            &self.description,
            "description",
            changed,
        );
        set(
            &mut t.external_id,
            &self.external_id,
            "external_id",
            changed,
        );
    }

    /// Sets the policies and the expiry, where given and different.
    fn apply_policies(&self, t: &mut Token, changed: &mut Vec<&'static str>) {
        set(
            &mut t.rate_limits,
            &self.rate_limits,
            "rate_limits",
            changed,
        );
        set(&mut t.quota, &self.quota, "quota", changed);
        set(
            &mut t.allowed_ips,
            &self.allowed_ips,
            "allowed_ips",
            changed,
        );
        if let Some((at, validity)) = self.expires {
            if at != t.expires_at {
                changed.push("expires_at");
            }
            t.expires_at = at;
            t.validity_secs = validity;
        }
    }
}

/// Sets `field` to `new` when given and different, noting `name` as changed.
fn set<T: Clone + PartialEq>(
    field: &mut T,
    new: &Option<T>,
    name: &'static str,
    changed: &mut Vec<&'static str>,
) {
    if let Some(v) = new
        && v != field
    {
        *field = v.clone();
        changed.push(name);
    }
}

/// A token editing itself must keep its admin access (SPEC §4 forbids disabling or
/// deleting oneself; dropping one's own admin permission locks out as well).
fn keeps_admin_access(ctx: &Ctx<'_>, id: TokenId, permissions: &[String]) -> Result<(), ApiError> {
    if id == ctx.caller.token.id && access(permissions, ADMIN_MODULE) == Access::None {
        return Err(ApiError::SelfLockout("remove the admin permission from"));
    }
    Ok(())
}

async fn set_disabled(
    ctx: &Ctx<'_>,
    id: TokenId,
    disabled: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if disabled {
        not_self(ctx, id, "disable")?;
    }
    let action = if disabled { "disabled" } else { "enabled" };
    let actor = Some(ctx.caller.token.id);
    let token = ctx
        .tokens
        .change(id, actor, action, &ctx.rt.config, ctx.now, |t| {
            may_change(&ctx.caller.token, t)?;
            t.disabled = disabled;
            Ok(names(&["status"]))
        })
        .await?;
    answer(ctx, StatusCode::OK, &token, None).await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default, deserialize_with = "nullable")]
    grace_period: Option<Option<String>>,
}

async fn rotate(
    ctx: &Ctx<'_>,
    id: TokenId,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, ApiError> {
    let b: RotateBody = parse_optional_json(body)?;
    let grace = match not_null(b.grace_period, "grace_period")? {
        None => Duration::ZERO,
        Some(s) => {
            duration::parse(&s).map_err(|e| ApiError::Validation(format!("grace_period: {e}")))?
        }
    };
    if grace > MAX_GRACE {
        return Err(ApiError::Validation(
            "grace_period: must be at most 7d".into(),
        ));
    }
    let until = jiff::SignedDuration::try_from(grace)
        .ok()
        .and_then(|g| ctx.now.checked_add(g).ok())
        .ok_or(ApiError::Internal)?;
    let secret = Secret::generate();
    let mut fields = vec!["secret"];
    if !grace.is_zero() {
        fields.push("grace_period");
    }
    let actor = Some(ctx.caller.token.id);
    let token = ctx
        .tokens
        .change(id, actor, "rotated", &ctx.rt.config, ctx.now, |t| {
            may_change(&ctx.caller.token, t)?;
            t.previous_secret = (!grace.is_zero()).then_some(PreviousSecret {
                hash: t.secret_hash,
                until,
            });
            t.secret_hash = secret.hash();
            Ok(names(&fields))
        })
        .await?;
    answer(ctx, StatusCode::OK, &token, Some(&secret)).await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    #[serde(default, deserialize_with = "nullable_time")]
    expires_at: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_in: Option<Option<String>>,
}

async fn renew(ctx: &Ctx<'_>, id: TokenId, body: &[u8]) -> Result<Response<Full<Bytes>>, ApiError> {
    let b: RenewBody = parse_optional_json(body)?;
    if matches!(b.expires_at, Some(None)) {
        return Err(ApiError::Validation(
            "expires_at: must not be null (PATCH with expires_at null makes a token perpetual)"
                .into(),
        ));
    }
    let given = match expiry(b.expires_at, b.expires_in)? {
        Some(e) => Some(e.resolve(ctx.now, e.field())?),
        None => None,
    };
    let now = ctx.now;
    let actor = Some(ctx.caller.token.id);
    let token = ctx
        .tokens
        .change(id, actor, "renewed", &ctx.rt.config, now, |t| {
            may_change(&ctx.caller.token, t)?;
            if t.expires_at.is_none() {
                return Err(ApiError::NotRenewable);
            }
            let (at, validity) = match given {
                Some(g) => g,
                None => renewed_expiry(now, t.validity_secs)?,
            };
            t.expires_at = at;
            t.validity_secs = validity;
            Ok(names(&["expires_at"]))
        })
        .await?;
    answer(ctx, StatusCode::OK, &token, None).await
}

async fn delete(ctx: &Ctx<'_>, id: TokenId) -> Result<Response<Full<Bytes>>, ApiError> {
    not_self(ctx, id, "delete")?;
    ctx.tokens
        .delete_checked(id, Some(ctx.caller.token.id), |target| {
            may_change(&ctx.caller.token, target)
        })
        .await?;
    // Its rate-limit and quota state here (the store dropped its quota row with it).
    ctx.limiters.forget(id);
    let mut res = json_response(StatusCode::NO_CONTENT, Bytes::new());
    res.headers_mut().remove(header::CONTENT_TYPE);
    Ok(res)
}

async fn events(ctx: &Ctx<'_>, id: TokenId) -> Result<Response<Full<Bytes>>, ApiError> {
    let events = ctx.tokens.events(id).await?;
    // The log outlives a deleted token; an id that never had a token has none.
    if events.is_empty() {
        ctx.tokens.get(id).await?;
    }
    let view: Vec<EventView> = events.into_iter().map(EventView::from).collect();
    ok(StatusCode::OK, &view)
}

// ---------------------------------------------------------------------------
// Listing.

/// The query of `GET /v1/tokens`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Page size.
    pub limit: usize,
    /// Tokens skipped.
    pub offset: usize,
    /// Only tokens with this status.
    pub status: Option<Status>,
    /// Only tokens of this extension.
    pub extension: Option<String>,
    /// Case-insensitive substring of name, description or external id (lower-cased).
    pub search: Option<String>,
}

/// Parses the list query; every bad parameter is a `VALIDATION` naming it.
pub fn parse_list_query(
    query: Option<&str>,
    config: &crate::config::Config,
) -> Result<ListQuery, ApiError> {
    let q = Query::parse(query)?;
    q.only(&["limit", "offset", "status", "extension", "search"])?;
    let limit = q.integer(
        "limit",
        1,
        MAX_LIMIT as u64,
        "must be an integer from 1 to 1000",
    )?;
    let offset = q.integer(
        "offset",
        0,
        MAX_OFFSET,
        "must be an integer from 0 to 4294967295",
    )?;
    let status = match q.get("status")? {
        None => None,
        Some("active") => Some(Status::Active),
        Some("disabled") => Some(Status::Disabled),
        Some("expired") => Some(Status::Expired),
        Some(_) => return Err(invalid("status", "must be active, disabled or expired")),
    };
    let extension = q.get("extension")?;
    if let Some(e) = extension {
        check_extension(e, config).map_err(|_| invalid("extension", "unknown extension"))?;
    }
    let search = q.get("search")?.unwrap_or("");
    if search.chars().count() > MAX_SEARCH_CHARS {
        return Err(invalid("search", "must be at most 1024 characters"));
    }
    Ok(ListQuery {
        limit: limit.map_or(DEFAULT_LIMIT, |n| usize::try_from(n).unwrap_or(MAX_LIMIT)),
        offset: offset.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        status,
        extension: extension.map(str::to_string),
        search: (!search.is_empty()).then(|| search.to_lowercase()),
    })
}

fn matches(t: &Token, q: &ListQuery, now: Timestamp) -> bool {
    if q.status.is_some_and(|s| t.status(now) != s) {
        return false;
    }
    if q.extension.as_ref().is_some_and(|e| *e != t.extension) {
        return false;
    }
    match &q.search {
        None => true,
        Some(s) => {
            t.name.to_lowercase().contains(s)
                || t.description.to_lowercase().contains(s)
                || t.external_id
                    .as_ref()
                    .is_some_and(|e| e.to_lowercase().contains(s))
        }
    }
}

async fn list(ctx: &Ctx<'_>, query: Option<&str>) -> Result<Response<Full<Bytes>>, ApiError> {
    let q = parse_list_query(query, &ctx.rt.config)?;
    let mut all: Vec<Token> = ctx
        .tokens
        .list()
        .await?
        .into_iter()
        .filter(|t| matches(t, &q, ctx.now))
        .collect();
    // Newest first, then by id: a total order, so pages never overlap or skip.
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let total = all.len();
    let mut page: Vec<TokenView> = Vec::with_capacity(q.limit.min(total));
    for t in all.iter().skip(q.offset).take(q.limit) {
        let store = ctx.tokens.store();
        page.push(view_with_usage(t, ctx.now, None, ctx.limiters, store).await);
    }
    let range = if page.is_empty() {
        format!("items */{total}")
    } else {
        format!("items {}-{}/{total}", q.offset, q.offset + page.len() - 1)
    };
    let mut res = ok(StatusCode::OK, &page)?;
    if let Ok(v) = HeaderValue::from_str(&range) {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct B {
            name: String,
        }
        let e = |b: &str| parse_json::<B>(b.as_bytes()).unwrap_err().to_string();
        assert!(
            e(r#"{"name": 5}"#).starts_with("name:"),
            "{}",
            e(r#"{"name": 5}"#)
        );
        assert!(e(r#"{"name": "a", "x": 1}"#).contains("`x`"));
        assert!(e(r#"{}"#).contains("`name`"));
        assert!(e(r#"{"name": "a"} x"#).starts_with("body:"));
        assert!(e("{").starts_with("body:"), "{}", e("{"));
    }
}
