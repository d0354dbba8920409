//! The OpenAPI 3.0 document of the admin API, served at `GET /openapi.json`.
//!
//! Schemas are strict (`additionalProperties: false`, lengths, patterns) so that a
//! schema-driven fuzzer generates meaningful requests and a client can rely on the
//! answers; `tests/openapi.rs` keeps it true: every route of [`super::ROUTES`] is here
//! and the answers of a full lifecycle validate against these schemas.
//!
//! The document is as strict as the server (a schema-driven fuzzer found every gap as
//! "valid request rejected"): enums come from the running configuration (extension
//! names, module names for permissions, `days` up to `stats.retention_days`), and the
//! duration patterns accept exactly the values the server does (`expires_in` from 1s to
//! 1000y, `grace_period` from 0s to 7d), so the document is built per configuration.

use bytes::Bytes;
use serde_json::{Value, json};

use super::tokens::{DEFAULT_LIMIT, MAX_GRACE, MAX_LIMIT, MAX_OFFSET, MAX_SEARCH_CHARS};
use crate::config::{ADMIN_MODULE, Config, PERMISSION_ALL};
use crate::duration::{MAX_MS, UNITS};
use crate::permissions::PERMISSION_ALL_READ;
use crate::policy::{MAX_LIMIT_REQUESTS, MAX_QUOTA_REQUESTS};
use crate::tokens::{MAX_DESCRIPTION_CHARS, MAX_EXTERNAL_ID_CHARS, MAX_NAME_CHARS, MIN_EXPIRES_IN};

/// `SU-ddd-ddd-ddd`.
const ID_PATTERN: &str = "^SU-[0-9]{3}-[0-9]{3}-[0-9]{3}$";

/// The document for `config`, serialised.
pub fn document_bytes(config: &Config) -> Bytes {
    Bytes::from(document(config).to_string())
}

/// A regex alternation of the decimal numbers (no leading zero) from `10^(min_digits-1)`
/// (or 1 when `min_digits` is 1) to `max`: the digit-by-digit construction of a
/// numeric range. Empty when there is none.
fn numbers_up_to(max: u64, min_digits: usize) -> Vec<String> {
    if max == 0 {
        return Vec::new();
    }
    let digits: Vec<u8> = max.to_string().bytes().map(|b| b - b'0').collect();
    let k = digits.len();
    let mut alts = Vec::new();
    // Shorter numbers than `max`: any value of that length.
    for len in min_digits.max(1)..k {
        alts.push(match len - 1 {
            0 => "[1-9]".to_string(),
            n => format!("[1-9][0-9]{{{n}}}"),
        });
    }
    if k < min_digits.max(1) {
        return alts;
    }
    // Same length: equal to `max` up to position i, smaller at i, anything after.
    for i in 0..k {
        let low = if i == 0 { 1 } else { 0 };
        let d = digits[i];
        if d > low {
            let prefix: String = digits[..i].iter().map(|x| char::from(b'0' + x)).collect();
            let class = if d - 1 == low {
                format!("{low}")
            } else {
                format!("[{low}-{}]", d - 1)
            };
            let rest = match k - i - 1 {
                0 => String::new(),
                n => format!("[0-9]{{{n}}}"),
            };
            alts.push(format!("{prefix}{class}{rest}"));
        }
    }
    alts.push(max.to_string());
    alts
}

/// A regex alternation of the `width`-digit decimal strings (leading zeros kept) from
/// `lo` to `hi`, both `width` digits long: the digit-by-digit range construction.
fn fixed_width_range(lo: &[u8], hi: &[u8]) -> Vec<String> {
    let (Some((&l, lo_rest)), Some((&h, hi_rest))) = (lo.split_first(), hi.split_first()) else {
        return vec![String::new()];
    };
    let any = |n: usize| match n {
        0 => String::new(),
        n => format!("[0-9]{{{n}}}"),
    };
    let class = |a: u8, b: u8| match b - a {
        0 => char::from(b'0' + a).to_string(),
        _ => format!("[{a}-{b}]"),
    };
    let full = lo_rest.iter().all(|&d| d == 0) && hi_rest.iter().all(|&d| d == 9);
    let lead = |d: u8, rest: Vec<String>| -> Vec<String> {
        rest.into_iter()
            .map(|r| format!("{}{r}", char::from(b'0' + d)))
            .collect()
    };
    if l == h {
        return lead(l, fixed_width_range(lo_rest, hi_rest));
    }
    if full {
        return vec![format!("{}{}", class(l, h), any(lo_rest.len()))];
    }
    let nines = vec![9; lo_rest.len()];
    let zeros = vec![0; hi_rest.len()];
    let mut alts = lead(l, fixed_width_range(lo_rest, &nines));
    if h - l > 1 {
        alts.push(format!("{}{}", class(l + 1, h - 1), any(lo_rest.len())));
    }
    alts.extend(lead(h, fixed_width_range(&zeros, hi_rest)));
    alts
}

/// A pattern for `expires_at`: a year after `year` (up to 9998; the server's last
/// expiry is 9999-12-30). JSON Schema cannot say "after now", so the document admits a
/// subset of what the server accepts: every time it admits is in the future (#14).
fn future_years_pattern(year: i16) -> String {
    let first = u16::try_from(year).unwrap_or(0).saturating_add(1).min(9998);
    let digits = |n: u16| {
        format!("{n:04}")
            .bytes()
            .map(|b| b - b'0')
            .collect::<Vec<_>>()
    };
    format!(
        "^({})-",
        fixed_width_range(&digits(first), &digits(9998)).join("|")
    )
}

/// A pattern for durations from `min_ms` (0 or a whole number of seconds) to `max_ms`,
/// exactly as `config::parse_duration` reads them (leading zeros allowed).
fn duration_pattern(min_ms: u64, max_ms: u64) -> String {
    let mut alts = Vec::new();
    for (unit, ms) in UNITS {
        let max = max_ms / ms;
        // Smallest accepted count of this unit: ceil(min_ms / ms), at least 1 unless 0
        // is allowed. Only powers of ten (1, 1000) are needed as lower bounds here.
        let min = min_ms.div_ceil(ms);
        let mut nums = if min <= 1 {
            numbers_up_to(max, 1)
        } else {
            debug_assert!(
                min.to_string()
                    .trim_start_matches('1')
                    .bytes()
                    .all(|b| b == b'0')
            );
            numbers_up_to(max, min.to_string().len())
        };
        if min_ms == 0 {
            nums.push("0".into());
        }
        if nums.is_empty() || max < min {
            continue;
        }
        alts.push(format!("0*({}){unit}", nums.join("|")));
    }
    format!("^({})$", alts.join("|"))
}

/// A pattern for whole seconds from 1s to `max_ms` (rate limit `per`): as
/// `duration_pattern(1000, max_ms)`, but milliseconds only as whole seconds (`2000ms`;
/// #14: schemathesis sent `60148344ms`, which the server refuses).
fn whole_seconds_pattern(max_ms: u64) -> String {
    let mut alts = Vec::new();
    for (unit, ms) in UNITS {
        let nums: Vec<String> = if ms == 1 {
            numbers_up_to(max_ms / 1000, 1)
                .into_iter()
                .map(|n| format!("{n}000"))
                .collect()
        } else {
            numbers_up_to(max_ms / ms, 1)
        };
        if !nums.is_empty() {
            alts.push(format!("0*({}){unit}", nums.join("|")));
        }
    }
    format!("^({})$", alts.join("|"))
}

/// A pattern for `allowed_ips` entries (cidr::Cidr::parse): IPv4 and IPv6 addresses,
/// and blocks with no host bits set below the prefix — every IPv4 spelling the server
/// takes, and the usual IPv6 ones (leading groups, then `::`). Not admitted although the
/// server takes them: an IPv6 block written with explicit zero groups after its prefix
/// (`2001:db8:0:0:0:0:0:0/32`) and IPv4-embedded IPv6 (`::ffff:192.0.2.7`). #14: the
/// looser pattern before admitted `000`, `1.2`, and blocks with host bits.
fn cidr_pattern() -> String {
    const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    const GROUP: &str = "[0-9A-Fa-f]{1,4}";
    let numbers = |from: u32, to: u32| {
        (from..=to)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("|")
    };
    let v4_addr = [OCTET; 4].join("\\.");
    let mut alts = vec![format!("{v4_addr}(/32)?")];
    // A prefix of `len` bits: whole octets of any value, one octet whose low bits are
    // zero (the values listed), then zero octets.
    for len in 0..32u32 {
        let (whole, bits) = (len / 8, len % 8);
        let step = 1u32 << (8 - bits);
        let partial = (0..256).step_by(step as usize).map(|v| v.to_string());
        let partial = format!("({})", partial.collect::<Vec<_>>().join("|"));
        let mut octets: Vec<String> = (0..whole).map(|_| OCTET.to_string()).collect();
        octets.push(partial);
        octets.resize(4, "0".to_string());
        alts.push(format!("{}/{len}", octets.join("\\.")));
    }
    let v6_addr = [
        format!("({GROUP}:){{7}}{GROUP}"),
        format!("({GROUP}:){{1,7}}:"),
        format!("({GROUP}:){{1,6}}:{GROUP}"),
        format!("({GROUP}:){{1,5}}(:{GROUP}){{1,2}}"),
        format!("({GROUP}:){{1,4}}(:{GROUP}){{1,3}}"),
        format!("({GROUP}:){{1,3}}(:{GROUP}){{1,4}}"),
        format!("({GROUP}:){{1,2}}(:{GROUP}){{1,5}}"),
        format!("{GROUP}:(:{GROUP}){{1,6}}"),
        format!(":((:{GROUP}){{1,7}}|:)"),
    ]
    .join("|");
    alts.push(format!("({v6_addr})(/128)?"));
    // `j` leading groups then `::`: any prefix of at least 16·j bits.
    alts.push(format!("::/({})", numbers(0, 128)));
    for j in 1..8u32 {
        alts.push(format!(
            "({GROUP}:){{{}}}{GROUP}::/({})",
            j - 1,
            numbers(16 * j, 128)
        ));
    }
    // `k` groups, the last with its low `zero` bits zero: a prefix of 16·k − zero bits.
    for k in 1..=8u32 {
        for zero in 1..16u32 {
            let (digits, bits) = (zero / 4, zero % 4);
            let digit = ["[0-9A-Fa-f]", "[02468AaCcEe]", "[048Cc]", "[08]"][bits as usize];
            let last = format!(
                "(0{{1,4}}|[0-9A-Fa-f]{{0,{}}}{digit}0{{{digits}}})",
                3 - digits
            );
            let tail = if k < 8 { "::" } else { "" };
            alts.push(format!(
                "({GROUP}:){{{}}}{last}{tail}/{}",
                k - 1,
                16 * k - zero
            ));
        }
    }
    format!("^({})$", alts.join("|"))
}

/// Permission names the server accepts: modules, `integrations` and `all`, each also
/// in its `:read` form.
fn permission_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.modules.iter().map(|m| m.name.clone()).collect();
    if !names.iter().any(|n| n == ADMIN_MODULE) {
        names.push(ADMIN_MODULE.to_string());
    }
    names.push(PERMISSION_ALL.to_string());
    let read: Vec<String> = names.iter().map(|n| format!("{n}:read")).collect();
    names.extend(read);
    names
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
        ("431", "HeadersTooLarge"),
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

fn with_default(mut s: Value, default: &str) -> Value {
    s["default"] = json!(default);
    s
}

/// `base` with the members of `more` added (both objects).
fn merge(mut base: Value, more: Value) -> Value {
    if let (Some(b), Value::Object(m)) = (base.as_object_mut(), more) {
        b.extend(m);
    }
    base
}

fn nullable(mut s: Value) -> Value {
    s["nullable"] = json!(true);
    s
}

fn token_properties(with_key: bool) -> (Value, Value) {
    // Answers may show names a reload has since removed: not an enum here.
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

fn schemas(config: &Config) -> Value {
    let (token, token_required) = token_properties(false);
    let (token_key, token_key_required) = token_properties(true);
    // tokens::check_name: no control character (Unicode Cc), not only white space
    // (Rust's char::is_whitespace, listed: ECMA's \s differs). check_description: no
    // control character but tab and newline.
    const WS: &str =
        "\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
    const CC: &str = "\\u0000-\\u001f\\u007f-\\u009f";
    let name = json!({ "type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS,
        "pattern": format!("^[^{CC}]*[^{CC}{WS}][^{CC}]*$") });
    let description = json!({ "type": "string", "maxLength": MAX_DESCRIPTION_CHARS,
        "pattern": "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f]*$" });
    let external_id = json!({ "type": "string", "minLength": 1, "maxLength": MAX_EXTERNAL_ID_CHARS, "pattern": "^[!-~]+$" });
    let extension_names: Vec<&str> = config.extensions.iter().map(|e| e.name.as_str()).collect();
    let extension = json!({ "type": "string", "enum": extension_names,
        "description": "An extension name from GET /v1/extensions (not its code)." });
    // Each name once, from the configuration; "all" only alone (a oneOf); `all:read`
    // only beside full permissions (an anyOf: without `all:read`, or without any other
    // `:read` entry); no module in both forms (`x` and `x:read`): OpenAPI 3.0 has no
    // `contains`, but "contains x" is `not: {items: {not: {enum: [x]}}}` (#14).
    let names: Vec<String> = permission_names(config)
        .into_iter()
        .filter(|n| n != PERMISSION_ALL && n != PERMISSION_ALL_READ)
        .collect();
    let beside_all_read: Vec<String> = names
        .iter()
        .filter(|n| !n.ends_with(":read"))
        .cloned()
        .chain([PERMISSION_ALL_READ.to_string()])
        .collect();
    // "contains m and m:read" = not ("no item is m" or "no item is m:read").
    let lacks = |x: &str| json!({ "type": "array", "items": { "not": { "enum": [x] } } });
    let both_forms: Vec<Value> = names
        .iter()
        .filter(|n| !n.ends_with(":read"))
        .map(|m| json!({ "not": { "anyOf": [lacks(m), lacks(&format!("{m}:read"))] } }))
        .collect();
    let permissions = json!({
        "type": "array", "minItems": 1,
        "description": "Module names from GET /v1/modules (plus `integrations`), each once, in full or as `:read` (not both), or exactly [\"all\"], or `all:read` beside full module permissions only (SPEC §8).",
        "oneOf": [
            { "type": "array", "minItems": 1, "maxItems": 1,
              "items": { "type": "string", "enum": [PERMISSION_ALL] } },
            { "anyOf": [
                { "type": "array", "minItems": 1, "uniqueItems": true,
                  "items": { "type": "string", "enum": names } },
                { "type": "array", "minItems": 1, "uniqueItems": true,
                  "items": { "type": "string", "enum": beside_all_read } },
              ],
              "not": { "anyOf": both_forms } },
        ],
    });
    // permissions may be left out only for an extension with preset permissions (the
    // default extension `custom` unless it has one).
    let presets: Vec<&str> = config
        .extensions
        .iter()
        .filter(|e| e.permissions.is_some())
        .map(|e| e.name.as_str())
        .collect();
    let default_preset = presets.contains(&"custom");
    let create_required = if default_preset {
        json!({ "required": ["name"] })
    } else if presets.is_empty() {
        json!({ "required": ["name", "permissions"] })
    } else {
        json!({ "required": ["name"], "anyOf": [
            { "type": "object", "required": ["permissions"] },
            { "type": "object", "required": ["extension"], "properties": { "extension": { "enum": presets } } },
        ] })
    };
    let year = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .year();
    let expires_at = json!({ "type": "string", "format": "date-time",
        "pattern": future_years_pattern(year),
        "description": "RFC 3339; in the future and before 9999-12-30. The pattern admits years after the current one only (a schema cannot say \"after now\"); the server accepts any later time." });
    // expires_at and expires_in together (even one of them null) answer 400.
    let one_expiry = json!({ "type": "object", "required": ["expires_at", "expires_in"] });
    let min_in = u64::try_from(MIN_EXPIRES_IN.as_millis()).unwrap_or(1000);
    let expires_in = json!({ "type": "string", "pattern": duration_pattern(min_in, MAX_MS),
        "description": "A duration such as 7d, 30d, 90d, 1y, 12h: from 1s to 1000y." });
    let max_grace = u64::try_from(MAX_GRACE.as_millis()).unwrap_or(u64::MAX);
    let rate_limits = json!({ "type": "array", "maxItems": 4, "items": schema_ref("RateLimit") });
    let allowed_ips = json!({ "type": "array", "maxItems": 64, "items": { "type": "string",
        "pattern": cidr_pattern(),
        "description": "An IPv4/IPv6 address or CIDR block without host bits below the prefix. The server also takes IPv6 blocks written with zero groups after the prefix, and IPv4-embedded IPv6 addresses, which the pattern leaves out." } });
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
        "TokenCreate": merge(create_required, json!({
            "type": "object", "additionalProperties": false,
            "description": "Give expires_at or expires_in, not both; neither = perpetual. permissions may be left out only for an extension with preset permissions (which it then takes).",
            "not": one_expiry.clone(),
            "properties": {
                "name": name.clone(),
                "description": nullable(description.clone()),
                "external_id": nullable(external_id.clone()),
                "extension": with_default(extension.clone(), "custom"),
                "permissions": permissions.clone(),
                "expires_at": nullable(expires_at.clone()),
                "expires_in": expires_in.clone(),
                "rate_limits": nullable(rate_limits.clone()),
                "quota": nullable(quota_schema()),
                "allowed_ips": nullable(allowed_ips.clone()),
            },
        })),
        "TokenPatch": {
            "type": "object", "additionalProperties": false,
            "description": "Only the fields given change. external_id null clears it; expires_at null makes the token perpetual. Not both expires_at and expires_in.",
            "not": one_expiry.clone(),
            "properties": {
                "name": name,
                "description": nullable(description),
                "external_id": nullable(external_id),
                "extension": extension,
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
                "per": { "type": "string", "pattern": whole_seconds_pattern(86_400_000),
                    "description": "Whole seconds from 1s to 1d, e.g. 1m." },
            },
        },
        "Quota": quota_schema(),
        "QuotaUsage": quota_usage_schema(),
        "Rotate": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "grace_period": { "type": "string", "pattern": duration_pattern(0, max_grace), "default": "0s",
                    "description": "How long the old secret keeps working (0s to 7d)." },
            },
        },
        "Renew": {
            "type": "object", "additionalProperties": false,
            "description": "Empty body: renew for the validity period last chosen. Not both expires_at and expires_in.",
            "not": one_expiry,
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
        "HeadersTooLarge": e("HEADERS_TOO_LARGE: the request head is over proxy.max_header_bytes"),
        "StoreUnavailable": e("STORE_UNAVAILABLE"),
    })
}

fn paths(config: &Config) -> Value {
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
        { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0 } },
        { "name": "status", "in": "query", "schema": { "type": "string", "enum": ["active", "disabled", "expired"] } },
        { "name": "extension", "in": "query", "schema": { "type": "string",
            "enum": config.extensions.iter().map(|e| e.name.as_str()).collect::<Vec<_>>() } },
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
                "schema": { "type": "integer", "minimum": 1, "maximum": config.stats.retention_days },
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

/// The whole document for the running configuration.
pub fn document(config: &Config) -> Value {
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
        "paths": paths(config),
        "components": {
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "The header value is `ApiKey <id>:<secret>`.",
                },
            },
            "schemas": schemas(config),
            "responses": error_responses(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_duration;

    /// The patterns accept exactly what the server accepts (#14 item 7).
    #[test]
    fn duration_patterns_match_the_server_exactly() {
        let expires_in = regex::Regex::new(&duration_pattern(1000, MAX_MS)).expect("regex");
        let grace = regex::Regex::new(&duration_pattern(0, 7 * 86_400_000)).expect("regex");
        let mut cases: Vec<String> = Vec::new();
        for n in [
            "0",
            "00",
            "1",
            "7",
            "8",
            "9",
            "10",
            "99",
            "100",
            "167",
            "168",
            "169",
            "999",
            "1000",
            "1001",
            "10080",
            "10081",
            "52142",
            "52143",
            "365000",
            "365001",
            "604800",
            "604801",
            "8760000",
            "8760001",
            "525600000",
            "525600001",
            "604800000",
            "604800001",
            "31536000000",
            "31536000001",
            "31536000000000",
            "31536000000001",
            "0007",
            "99999999999999999999",
        ] {
            for (u, _) in UNITS {
                cases.push(format!("{n}{u}"));
            }
        }
        cases.extend(["", "d", "7", "-1s", "1.5h", "7 d", "7x", "1D"].map(String::from));
        for c in &cases {
            let parsed = parse_duration(c).ok();
            let ok_in = parsed.is_some_and(|d| d >= MIN_EXPIRES_IN);
            assert_eq!(expires_in.is_match(c), ok_in, "expires_in {c:?}");
            let ok_grace = parsed.is_some_and(|d| d <= MAX_GRACE);
            assert_eq!(grace.is_match(c), ok_grace, "grace_period {c:?}");
        }
    }

    #[test]
    fn future_years_pattern_is_exact() {
        for year in [1999i16, 2026, 2029, 2099, 2999, 8999, 9997, 9998, 9999] {
            let re = regex::Regex::new(&future_years_pattern(year)).expect("regex");
            for y in 0..=9999i16 {
                let want = y > year.min(9997) && y <= 9998;
                assert_eq!(
                    re.is_match(&format!("{y:04}-01-01T00:00:00Z")),
                    want,
                    "year {year}, {y}"
                );
            }
        }
    }

    #[test]
    fn numbers_up_to_is_exact() {
        for max in [1u64, 7, 9, 10, 19, 20, 168, 1000, 10080, 52142] {
            for min_digits in [1usize, 2, 4] {
                let re =
                    regex::Regex::new(&format!("^({})$", numbers_up_to(max, min_digits).join("|")));
                let Ok(re) = re else { continue };
                for n in 0..=max + 20 {
                    let want = n >= 1 && n <= max && n.to_string().len() >= min_digits;
                    assert_eq!(
                        re.is_match(&n.to_string()),
                        want,
                        "max {max} min_digits {min_digits} n {n}"
                    );
                }
            }
        }
    }
}
