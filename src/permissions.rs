//! Permission strings (SPEC §1, §8): a module name, `all`, or either with `:read`;
//! what a list of them grants in one module, and whether a list is well formed.
//! Plain data and functions: the config, the token store and the admin API use them.

/// The permission that grants every module, present and future.
pub const PERMISSION_ALL: &str = "all";
/// `all:read`.
pub const PERMISSION_ALL_READ: &str = "all:read";
/// The suffix of a read-only permission.
pub const READ_SUFFIX: &str = ":read";
/// The module whose permission gives access to the admin API.
pub const ADMIN_MODULE: &str = "integrations";

/// What a token may do in one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing.
    None,
    /// GET, HEAD and OPTIONS.
    Read,
    /// Every method.
    Full,
}

/// A permission string split into its module (or `all`) and whether it is `:read`.
pub fn split_permission(p: &str) -> (&str, bool) {
    match p.strip_suffix(READ_SUFFIX) {
        Some(m) => (m, true),
        None => (p, false),
    }
}

/// The access `perms` give to module `module` (`all` and `all:read` included).
pub fn access(perms: &[String], module: &str) -> Access {
    let mut best = Access::None;
    for p in perms {
        let (m, read) = split_permission(p);
        if m == PERMISSION_ALL || m == module {
            best = best.max(if read { Access::Read } else { Access::Full });
        }
    }
    best
}

/// Whether `holder` holds at least every permission in `wanted`, module by module
/// (SPEC §4, §8): `all` needs `all`, `all:read` needs `all` or `all:read` (both also
/// cover modules added later), a module needs at least the same access.
pub fn holds_all(holder: &[String], wanted: &[String]) -> bool {
    let has = |p: &str| holder.iter().any(|h| h == p);
    wanted.iter().all(|p| {
        let (m, read) = split_permission(p);
        let need = if read { Access::Read } else { Access::Full };
        if m == PERMISSION_ALL {
            has(PERMISSION_ALL) || (read && has(PERMISSION_ALL_READ))
        } else {
            access(holder, m) >= need
        }
    })
}

/// Checks a permission list (SPEC §1, §8): module names of `modules` (or the admin
/// module `integrations`), each once, in full or `:read` form; `all` alone; `all:read`
/// possibly with full module permissions but no `:read` ones beside it.
pub fn check_permission_list(p: &[String], modules: &[&str]) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if p.iter().any(|x| x == PERMISSION_ALL) && p.len() != 1 {
        return Err("\"all\" must be the only entry".into());
    }
    let all_read = p.iter().any(|x| x == PERMISSION_ALL_READ);
    for (i, name) in p.iter().enumerate() {
        let (m, read) = split_permission(name);
        if m != PERMISSION_ALL && m != ADMIN_MODULE && !modules.contains(&m) {
            return Err(format!(
                "unknown module {:?} (see GET /v1/modules)",
                short(name)
            ));
        }
        if p[..i].iter().any(|x| split_permission(x).0 == m) {
            return Err(format!("module {:?} is named twice", short(m)));
        }
        if read && all_read && m != PERMISSION_ALL {
            return Err(format!(
                "{:?} is redundant beside \"all:read\"",
                short(name)
            ));
        }
    }
    Ok(())
}

/// Whether `method` is allowed by a `:read` permission.
pub fn is_read_method(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// `s` cut to 64 characters for a message.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn access_and_escalation_per_module() {
        let p = v(&["all:read", "billing"]);
        assert_eq!(access(&p, "billing"), Access::Full);
        assert_eq!(access(&p, "other"), Access::Read);
        assert_eq!(access(&v(&["a:read"]), "a"), Access::Read);
        assert_eq!(access(&v(&["a:read"]), "b"), Access::None);
        assert!(holds_all(&v(&["all"]), &v(&["all:read", "x"])));
        assert!(holds_all(&v(&["a"]), &v(&["a:read"])));
        assert!(!holds_all(&v(&["a:read"]), &v(&["a"])));
        assert!(holds_all(&v(&["all:read"]), &v(&["a:read", "all:read"])));
        assert!(!holds_all(&v(&["all:read"]), &v(&["all"])));
        assert!(!holds_all(&v(&["a", "b"]), &v(&["all:read"])));
        assert!(!holds_all(&v(&["a:read"]), &v(&["all:read"])));
    }

    #[test]
    fn permission_lists() {
        let m = ["a", "b"];
        let ok = |x: &[&str]| check_permission_list(&v(x), &m);
        assert!(ok(&["a", "b:read"]).is_ok());
        assert!(ok(&["all"]).is_ok());
        assert!(ok(&["all:read", "b", "integrations"]).is_ok());
        assert!(ok(&["integrations:read"]).is_ok());
        assert!(ok(&[]).is_err());
        assert!(ok(&["all", "a"]).unwrap_err().contains("only"));
        assert!(ok(&["a", "a:read"]).unwrap_err().contains("twice"));
        assert!(ok(&["all:read", "all:read"]).unwrap_err().contains("twice"));
        assert!(
            ok(&["all:read", "a:read"])
                .unwrap_err()
                .contains("redundant")
        );
        assert!(ok(&["c:read"]).unwrap_err().contains("unknown"));
        assert!(ok(&["a:write"]).unwrap_err().contains("unknown"));
    }
}
