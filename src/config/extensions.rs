//! `[[extensions]]`: the extension catalogue (SPEC §1), the default one when unset.

use std::collections::HashSet;

use serde::Deserialize;

use super::{Check, ConfigError, Module, valid_name};
use crate::error::shown;
use crate::permissions::check_permission_list;

/// `[[extensions]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExtensionFile {
    name: String,
    code: String,
    #[serde(default)]
    description: String,
    permissions: Option<Vec<String>>,
}

/// One entry of the extension catalogue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Extension {
    /// Short name used in the API (`zapier`).
    pub name: String,
    /// Catalogue code (`EXT-816`).
    pub code: String,
    /// Human description.
    pub description: String,
    /// The permissions every token of this extension gets (SPEC §8), if fixed.
    pub permissions: Option<Vec<String>>,
}

/// The default extension catalogue (SPEC §1).
pub fn default_extensions() -> Vec<Extension> {
    [
        ("custom", "EXT-000", "Custom integration"),
        ("reports", "EXT-569", "Custom Reports creation"),
        ("devops", "EXT-005", "Connect DevOps extensions"),
        ("zapier", "EXT-816", "Zapier workflow automation platform"),
        ("flowgear", "EXT-248", "Flowgear iPaaS platform"),
    ]
    .into_iter()
    .map(|(name, code, description)| Extension {
        name: name.into(),
        code: code.into(),
        description: description.into(),
        permissions: None,
    })
    .collect()
}

/// Converts `[[extensions]]`; their permissions are checked once the modules are known
/// ([`check_permissions`]).
pub(super) fn extensions(
    list: Option<Vec<ExtensionFile>>,
    c: Check,
) -> Result<Vec<Extension>, ConfigError> {
    let extensions = match list {
        None => default_extensions(),
        Some(list) if list.is_empty() => {
            return Err(c.err("extensions", "must list at least one extension"));
        }
        Some(list) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, e) in list.into_iter().enumerate() {
                out.push(extension(i, e, &mut seen, c)?);
            }
            out
        }
    };
    if !extensions.iter().any(|e| e.name == "custom") {
        return Err(c.err(
            "extensions",
            "must include \"custom\" (the default extension of new tokens)",
        ));
    }
    Ok(extensions)
}

/// Converts `extensions[i]`; `seen` holds the names before it.
fn extension(
    i: usize,
    e: ExtensionFile,
    seen: &mut HashSet<String>,
    c: Check,
) -> Result<Extension, ConfigError> {
    if !valid_name(&e.name) {
        return Err(c.err(
            &format!("extensions[{i}].name"),
            format!("{} must be 1-64 of a-z, 0-9, '_' and '-'", shown(&e.name)),
        ));
    }
    if !seen.insert(e.name.clone()) {
        return Err(c.err(
            &format!("extensions[{i}].name"),
            format!("{} is listed twice", shown(&e.name)),
        ));
    }
    if e.code.is_empty() || e.code.len() > 64 {
        return Err(c.err(&format!("extensions[{i}].code"), "must be 1-64 characters"));
    }
    Ok(Extension {
        name: e.name,
        code: e.code,
        description: e.description,
        permissions: e.permissions,
    })
}

/// An extension's fixed permissions name only configured modules (SPEC §8).
pub(super) fn check_permissions(
    extensions: &[Extension],
    modules: &[Module],
    c: Check,
) -> Result<(), ConfigError> {
    let module_names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    for (i, e) in extensions.iter().enumerate() {
        if let Some(p) = &e.permissions {
            check_permission_list(p, &module_names)
                .map_err(|reason| c.err(&format!("extensions[{i}].permissions"), reason))?;
        }
    }
    Ok(())
}
