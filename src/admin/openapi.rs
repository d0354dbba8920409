//! The OpenAPI 3.0 document of the admin API, served at `GET /openapi.json`.
//!
//! Schemas are strict (`additionalProperties: false`, lengths, patterns) so that a
//! schema-driven fuzzer generates meaningful requests and a client can rely on the
//! answers; `tests/openapi.rs` keeps it true: every route of [`super::ROUTES`] is here
//! and the answers of a full lifecycle validate against these schemas.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Value, json};

use super::tokens::{DEFAULT_LIMIT, MAX_LIMIT, MAX_SEARCH_CHARS};
use crate::policy::{MAX_LIMIT_REQUESTS, MAX_QUOTA_REQUESTS};
use crate::tokens::{MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS, MAX_NAME_CHARS};

/// `SU-ddd-ddd-ddd`.
const ID_PATTERN: &str = "^SU-[0-9]{3}-[0-9]{3}-[0-9]{3}$";
/// An integer and a unit.
const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h|d|w|y)$";

/// The document, serialised once.
pub fn document_bytes() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(document().to_string()))
        .clone()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": json_content(schema) })
}

fn error_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

/// The error answers every authenticated route can give, plus `extra`.
fn responses(success: (&str, Value), extra: &[(&str, &str)]) -> Value {
    let mut r = serde_json::Map::new();
    r.insert(success.0.to_string(), success.1);
    for (code, name) in [
        ("400", "BadRequest"),
        ("401", "Unauthorized"),
        ("403", "Forbidden"),
        ("405", "MethodNotAllowed"),
        ("503", "StoreUnavailable"),
    ]
    .iter()
    .chain(extra)
    {
        r.insert(code.to_string(), error_ref(name));
    }
    Value::Object(r)
}

fn op(id: &str, summary: &str, responses: Value) -> Value {
    json!({
        "operationId": id,
        "summary": summary,
        "tags": ["tokens"],
        "responses": responses,
    })
}

fn with_body(mut op: Value, schema: &str, required: bool) -> Value {
    op["requestBody"] = json!({
        "required": required,
        "content": json_content(schema_ref(schema)),
    });
    op
}

fn id_param() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": "Token id. Any other shape answers 404 TOKEN_NOT_FOUND.",
        "schema": { "type": "string", "pattern": ID_PATTERN },
    })
}

/// `Quota` inline (OpenAPI 3.0 ignores `nullable` beside a `$ref`).
fn quota_schema() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["requests", "period"],
        "properties": {
            "requests": { "type": "integer", "minimum": 1, "maximum": MAX_QUOTA_REQUESTS },
            "period": { "type": "string", "enum": ["day", "month"],
                "description": "A UTC calendar period." },
        },
    })
}

/// `QuotaUsage` inline.
fn quota_usage_schema() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["used", "period_start", "period_end"],
        "properties": {
            "used": { "type": "integer", "minimum": 0 },
            "period_start": { "type": "string", "format": "date-time" },
            "period_end": { "type": "string", "format": "date-time",
                "description": "The next period's start." },
        },
    })
}

fn nullable(mut s: Value) -> Value {
    s["nullable"] = json!(true);
    s
}

fn token_properties(with_key: bool) -> (Value, Value) {
    let ts = json!({ "type": "string", "format": "date-time" });
    let mut p = json!({
        "id": { "type": "string", "pattern": ID_PATTERN },
        "name": { "type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS },
        "description": { "type": "string", "maxLength": MAX_DESCRIPTION_CHARS },
        "external_id": nullable(json!({ "type": "string", "minLength": 1, "maxLength": MAX_EXTERNAL_ID_CHARS })),
        "extension": { "type": "string", "description": "An extension name from GET /v1/extensions." },
        "permissions": { "type": "array", "minItems": 1, "items": { "type": "string" },
            "description": "Module names from GET /v1/modules (plus `integrations`), each alone (every method) or as `<module>:read` (GET, HEAD, OPTIONS); exactly [\"all\"]; or `all:read` with full module permissions." },
        "rate_limits": { "type": "array", "maxItems": 4, "items": schema_ref("RateLimit") },
        "quota": nullable(quota_schema()),
        "quota_usage": nullable(quota_usage_schema()),
        "allowed_ips": { "type": "array", "maxItems": 64,
            "items": { "type": "string", "description": "CIDR form, e.g. 192.0.2.7/32." } },
        "status": { "type": "string", "enum": ["active", "disabled", "expired"] },
        "expires_at": nullable(ts.clone()),
        "created_at": ts.clone(),
        "updated_at": ts.clone(),
        "created_by": nullable(json!({ "type": "string", "pattern": ID_PATTERN })),
        "last_used_at": nullable(ts),
    });
    let mut required = vec![
        "id",
        "name",
        "description",
        "external_id",
        "extension",
        "permissions",
        "status",
        "expires_at",
        "created_at",
        "updated_at",
        "created_by",
        "last_used_at",
        "rate_limits",
        "quota",
        "quota_usage",
        "allowed_ips",
    ];
    if with_key {
        p["api_key"] = json!({
            "type": "string",
            "pattern": "^SU-[0-9]{3}-[0-9]{3}-[0-9]{3}:[0-9a-f]{40}$",
            "description": "`<id>:<secret>`; shown only in this answer.",
        });
        required.push("api_key");
    }
    (p, json!(required))
}

fn schemas() -> Value {
    let (token, token_required) = token_properties(false);
    let (token_key, token_key_required) = token_properties(true);
    let name = json!({ "type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS });
    let description = json!({ "type": "string", "maxLength": MAX_DESCRIPTION_CHARS });
    let external_id = json!({ "type": "string", "minLength": 1, "maxLength": MAX_EXTERNAL_ID_CHARS, "pattern": "^[!-~]+$" });
    let permissions = json!({ "type": "array", "minItems": 1, "items": { "type": "string" } });
    let expires_at = json!({ "type": "string", "format": "date-time",
        "description": "RFC 3339; must be in the future." });
    let expires_in = json!({ "type": "string", "pattern": DURATION_PATTERN,
        "description": "A duration such as 7d, 30d, 90d, 1y, 12h." });
    let rate_limits = json!({ "type": "array", "maxItems": 4, "items": schema_ref("RateLimit") });
    let allowed_ips = json!({ "type": "array", "maxItems": 64, "items": { "type": "string",
        "description": "An IPv4/IPv6 address or CIDR block without host bits below the prefix." } });
    json!({
        "Error": {
            "type": "object", "additionalProperties": false,
            "required": ["error_code", "errors"],
            "properties": {
                "error_code": { "type": "string" },
                "errors": { "type": "array", "items": { "type": "string" } },
            },
        },
        "Health": {
            "type": "object", "additionalProperties": false, "required": ["status"],
            "properties": { "status": { "type": "string" } },
        },
        "Token": {
            "type": "object", "additionalProperties": false,
            "required": token_required, "properties": token,
        },
        "TokenWithKey": {
            "type": "object", "additionalProperties": false,
            "required": token_key_required, "properties": token_key,
        },
        "TokenList": { "type": "array", "items": schema_ref("Token") },
        "TokenCreate": {
            "type": "object", "additionalProperties": false,
            "required": ["name"],
            "description": "Give expires_at or expires_in, not both; neither = perpetual. permissions may be left out only for an extension with preset permissions (which it then takes).",
            "properties": {
                "name": name.clone(),
                "description": nullable(description.clone()),
                "external_id": nullable(external_id.clone()),
                "extension": { "type": "string", "default": "custom" },
                "permissions": permissions.clone(),
                "expires_at": nullable(expires_at.clone()),
                "expires_in": expires_in.clone(),
                "rate_limits": rate_limits.clone(),
                "quota": nullable(quota_schema()),
                "allowed_ips": allowed_ips.clone(),
            },
        },
        "TokenPatch": {
            "type": "object", "additionalProperties": false,
            "description": "Only the fields given change. external_id null clears it; expires_at null makes the token perpetual.",
            "properties": {
                "name": name,
                "description": nullable(description),
                "external_id": nullable(external_id),
                "extension": { "type": "string" },
                "permissions": permissions,
                "expires_at": nullable(expires_at.clone()),
                "expires_in": expires_in.clone(),
                "rate_limits": nullable(rate_limits),
                "quota": nullable(quota_schema()),
                "allowed_ips": nullable(allowed_ips),
            },
        },
        "RateLimit": {
            "type": "object", "additionalProperties": false,
            "required": ["requests", "per"],
            "properties": {
                "requests": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT_REQUESTS },
                "per": { "type": "string", "pattern": DURATION_PATTERN,
                    "description": "Whole seconds from 1s to 1d, e.g. 1m." },
            },
        },
        "Quota": quota_schema(),
        "QuotaUsage": quota_usage_schema(),
        "Rotate": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "grace_period": { "type": "string", "pattern": DURATION_PATTERN, "default": "0s",
                    "description": "How long the old secret keeps working (at most 7d)." },
            },
        },
        "Renew": {
            "type": "object", "additionalProperties": false,
            "description": "Empty body: renew for the validity period last chosen.",
            "properties": { "expires_at": expires_at, "expires_in": expires_in },
        },
        "Event": {
            "type": "object", "additionalProperties": false,
            "required": ["at", "actor", "action", "fields"],
            "properties": {
                "at": { "type": "string", "format": "date-time" },
                "actor": nullable(json!({ "type": "string", "pattern": ID_PATTERN })),
                "action": { "type": "string",
                    "enum": ["created", "updated", "disabled", "enabled", "rotated", "renewed", "deleted",
                             "expiring", "expired", "quota_exceeded"] },
                "fields": { "type": "array", "items": { "type": "string" } },
            },
        },
        "EventList": { "type": "array", "items": schema_ref("Event") },
        "ClassCounts": {
            "type": "object", "additionalProperties": false,
            "required": ["2xx", "3xx", "4xx", "5xx"],
            "properties": {
                "2xx": { "type": "integer", "minimum": 0 },
                "3xx": { "type": "integer", "minimum": 0 },
                "4xx": { "type": "integer", "minimum": 0 },
                "5xx": { "type": "integer", "minimum": 0 },
            },
        },
        "DayCounts": {
            "type": "object", "additionalProperties": false,
            "required": ["date", "2xx", "3xx", "4xx", "5xx"],
            "properties": {
                "date": { "type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$" },
                "2xx": { "type": "integer", "minimum": 0 },
                "3xx": { "type": "integer", "minimum": 0 },
                "4xx": { "type": "integer", "minimum": 0 },
                "5xx": { "type": "integer", "minimum": 0 },
            },
        },
        "TokenStats": {
            "type": "object", "additionalProperties": false,
            "required": ["token_id", "days", "totals"],
            "properties": {
                "token_id": { "type": "string", "pattern": "^SU-[0-9]{3}-[0-9]{3}-[0-9]{3}$" },
                "days": { "type": "array", "items": schema_ref("DayCounts") },
                "totals": schema_ref("ClassCounts"),
            },
        },
        "Module": {
            "type": "object", "additionalProperties": false,
            "required": ["name", "description", "prefixes"],
            "properties": {
                "name": { "type": "string" },
                "description": { "type": "string" },
                "prefixes": { "type": "array", "items": { "type": "string" } },
            },
        },
        "ModuleList": { "type": "array", "items": schema_ref("Module") },
        "Extension": {
            "type": "object", "additionalProperties": false,
            "required": ["name", "code", "description", "permissions"],
            "properties": {
                "name": { "type": "string" },
                "code": { "type": "string" },
                "description": { "type": "string" },
                "permissions": nullable(json!({ "type": "array", "items": { "type": "string" },
                    "description": "Preset permissions every token of this extension gets, or null." })),
            },
        },
        "ExtensionList": { "type": "array", "items": schema_ref("Extension") },
    })
}

fn error_responses() -> Value {
    let e = |description: &str| json!({ "description": description, "content": json_content(schema_ref("Error")) });
    let mut unauthorized = e(
        "AUTH_MISSING (with WWW-Authenticate: ApiKey), AUTH_INVALID, AUTH_DISABLED or AUTH_EXPIRED",
    );
    unauthorized["headers"] = json!({
        "WWW-Authenticate": { "schema": { "type": "string" }, "description": "ApiKey (with AUTH_MISSING)" }
    });
    json!({
        "BadRequest": e("VALIDATION (the field or parameter is named), or REQ_MALFORMED"),
        "Unauthorized": unauthorized,
        "Forbidden": e("PERM_DENIED (no integrations permission, or only integrations:read on a non-GET route), IP_NOT_ALLOWED (the caller's allowed_ips) or PERM_ESCALATION"),
        "NotFound": e("TOKEN_NOT_FOUND"),
        "MethodNotAllowed": e("METHOD_NOT_ALLOWED (see the Allow header)"),
        "Conflict": e("SELF_LOCKOUT or NOT_RENEWABLE"),
        "TooLarge": e("VALIDATION: the body is over 64 KiB"),
        "StoreUnavailable": e("STORE_UNAVAILABLE"),
    })
}

fn paths() -> Value {
    let token = || ok("The token.", schema_ref("Token"));
    let token_key = || {
        ok(
            "The token and its new API key (shown once).",
            schema_ref("TokenWithKey"),
        )
    };
    let nf = [("404", "NotFound")];
    let body = [("404", "NotFound"), ("413", "TooLarge")];
    let list_params = json!([
        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT } },
        { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "default": 0 } },
        { "name": "status", "in": "query", "schema": { "type": "string", "enum": ["active", "disabled", "expired"] } },
        { "name": "extension", "in": "query", "schema": { "type": "string" } },
        { "name": "search", "in": "query", "description": "Case-insensitive substring of name, description or external id.",
          "schema": { "type": "string", "maxLength": MAX_SEARCH_CHARS } },
    ]);
    let mut list_ok = ok(
        "A page of tokens, newest first (then by id).",
        schema_ref("TokenList"),
    );
    list_ok["headers"] = json!({
        "Content-Range": { "schema": { "type": "string" },
            "description": "items <first>-<last>/<total>, or items */<total> for an empty page" }
    });
    let unauthenticated = |id: &str, summary: &str, schema: &str, extra: Value| {
        let mut responses = json!({ "200": ok(summary, schema_ref(schema)) });
        if let (Some(r), Some(x)) = (responses.as_object_mut(), extra.as_object()) {
            r.extend(x.clone());
        }
        json!({ "get": {
            "operationId": id, "summary": summary, "tags": ["service"],
            "security": [], "responses": responses,
        }})
    };
    let mut delete_responses = responses(
        ("204", json!({ "description": "Deleted." })),
        &[("404", "NotFound"), ("409", "Conflict")],
    );
    delete_responses["204"] = json!({ "description": "Deleted; the id is never reused." });
    let mut created = ok(
        "The new token and its API key (shown once).",
        schema_ref("TokenWithKey"),
    );
    created["headers"] = json!({ "Location": { "schema": { "type": "string" } } });
    json!({
        "/healthz": unauthenticated("healthz", "The process is up.", "Health", json!({})),
        "/readyz": unauthenticated("readyz", "The store is reachable.", "Health",
            json!({ "503": { "description": "The store is unreachable.", "content": json_content(schema_ref("Health")) } })),
        "/openapi.json": { "get": {
            "operationId": "openapi", "summary": "This document.", "tags": ["service"], "security": [],
            "responses": { "200": { "description": "OpenAPI 3.0 document.",
                "content": { "application/json": { "schema": { "type": "object" } } } } },
        }},
        "/v1/tokens": {
            "get": {
                "operationId": "listTokens", "summary": "List tokens.", "tags": ["tokens"],
                "parameters": list_params,
                "responses": responses(("200", list_ok), &[]),
            },
            "post": with_body(op("createToken", "Create a token.",
                responses(("201", created), &[("413", "TooLarge")])), "TokenCreate", true),
        },
        "/v1/tokens/{id}": {
            "parameters": [id_param()],
            "get": op("getToken", "One token.", responses(("200", token()), &nf)),
            "patch": with_body(op("editToken", "Edit a token.", responses(("200", token()), &body)), "TokenPatch", true),
            "delete": op("deleteToken", "Delete a token (not the caller itself).", delete_responses),
        },
        "/v1/tokens/{id}/disable": {
            "parameters": [id_param()],
            "post": op("disableToken", "Disable a token (not the caller itself).",
                responses(("200", token()), &[("404", "NotFound"), ("409", "Conflict")])),
        },
        "/v1/tokens/{id}/enable": {
            "parameters": [id_param()],
            "post": op("enableToken", "Enable a token.", responses(("200", token()), &nf)),
        },
        "/v1/tokens/{id}/rotate": {
            "parameters": [id_param()],
            "post": with_body(op("rotateToken", "Replace the secret.",
                responses(("200", token_key()), &body)), "Rotate", false),
        },
        "/v1/tokens/{id}/renew": {
            "parameters": [id_param()],
            "post": with_body(op("renewToken", "Extend the expiry (active again if it had expired).",
                responses(("200", token()), &[("404", "NotFound"), ("409", "Conflict"), ("413", "TooLarge")])), "Renew", false),
        },
        "/v1/tokens/{id}/events": {
            "parameters": [id_param()],
            "get": op("tokenEvents", "The token's audit log, oldest first (kept after delete).",
                responses(("200", ok("Audit events.", schema_ref("EventList"))), &nf)),
        },
        "/v1/tokens/{id}/stats": {
            "parameters": [id_param(), {
                "name": "days", "in": "query", "required": false,
                "description": "Days to show, 1 to stats.retention_days (default 30, or the retention if smaller).",
                "schema": { "type": "integer", "minimum": 1, "maximum": 3650 },
            }],
            "get": op("tokenStats", "Responses per UTC day by class, oldest first, zeros included, with totals.",
                responses(("200", ok("Statistics.", schema_ref("TokenStats"))), &nf)),
        },
        "/metrics": { "get": {
            "operationId": "metrics", "summary": "Prometheus metrics (text exposition format).", "tags": ["service"], "security": [],
            "responses": { "200": { "description": "Metrics.",
                "content": { "text/plain": { "schema": { "type": "string" } } } } },
        }},
        "/v1/modules": {
            "get": op("listModules", "The configured modules.",
                responses(("200", ok("Modules.", schema_ref("ModuleList"))), &[])),
        },
        "/v1/extensions": {
            "get": op("listExtensions", "The extension catalogue.",
                responses(("200", ok("Extensions.", schema_ref("ExtensionList"))), &[])),
        },
    })
}

/// The whole document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "keygate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Token lifecycle of the keygate gateway. Every /v1 route needs `Authorization: ApiKey <id>:<secret>` of an active token with the `integrations` (or `all`) permission; `integrations:read` (or `all:read`) is enough for GET routes. Errors are `{\"error_code\", \"errors\"}`.",
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "tokens", "description": "API tokens" },
            { "name": "service", "description": "Health and this document" },
        ],
        "security": [{ "ApiKey": [] }],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "The header value is `ApiKey <id>:<secret>`.",
                },
            },
            "schemas": schemas(),
            "responses": error_responses(),
        },
    })
}
