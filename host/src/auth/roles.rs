//! Claims → app roles, through the configured role sources (`auth.role_sources`).
//!
//! Deny by default: a value no source maps is ignored, a claim that is missing or of
//! another shape than its source says gives nothing, and a token without any mapped
//! value has no role (routes then answer 403).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::config::{ClaimFormat, Role, RoleSource};

/// The app roles the `claims` grant under `sources`, united over the sources,
/// `admin` expanded to every role, in [`Role::ALL`] order.
pub fn roles_from_claims(claims: &Map<String, Value>, sources: &[RoleSource]) -> Vec<Role> {
    let mut granted = BTreeSet::new();
    for source in sources {
        let Some(claim) = find(claims, &source.claim) else {
            continue;
        };
        for value in values(claim, source.format) {
            if let Some(role) = source.roles.get(value) {
                granted.insert(*role);
            }
        }
    }
    if granted.contains(&Role::Admin) {
        return Role::ALL.to_vec();
    }
    Role::ALL
        .into_iter()
        .filter(|role| granted.contains(role))
        .collect()
}

/// The claim at `path`, one object key per segment (so `https://example.com/roles`
/// is one segment, not a path).
fn find<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first)?, |value, segment| value.get(segment))
}

/// The values a claim holds in `format`; nothing when it has another shape.
fn values(claim: &Value, format: ClaimFormat) -> Vec<&str> {
    match (format, claim) {
        (ClaimFormat::Array, Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        (ClaimFormat::SpaceDelimited, Value::String(s)) => s.split_whitespace().collect(),
        (ClaimFormat::String, Value::String(s)) => vec![s.as_str()],
        (ClaimFormat::ObjectKeys, Value::Object(map)) => map.keys().map(String::as_str).collect(),
        _ => Vec::new(),
    }
}
