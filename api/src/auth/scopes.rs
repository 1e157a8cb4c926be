//! Roles, scopes and what a token's claims grant. Pure code, no I/O.
//!
//! | role | scopes |
//! |---|---|
//! | `admin` | `conversations:read messages:send admin` |
//! | `agent` | `conversations:read messages:send` |
//!
//! An OIDC token carries its scopes itself, in `scope` (space separated)
//! or `scp` (an array, or a string); scopes this api does not know are
//! ignored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a bearer token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read conversations, messages and rejected events.
    ConversationsRead,
    /// Send messages (answer conversations).
    MessagesSend,
    /// Manage agents.
    Admin,
}

impl Scope {
    /// Every scope, in the order tokens list them.
    pub const ALL: [Scope; 3] = [Scope::ConversationsRead, Scope::MessagesSend, Scope::Admin];

    /// The scope's name in tokens and OpenAPI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ConversationsRead => "conversations:read",
            Scope::MessagesSend => "messages:send",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `s`, if this api knows it.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// An agent's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages agents, reads and answers conversations.
    Admin,
    /// Reads and answers conversations; reads and updates itself.
    Agent,
}

impl Role {
    /// The role's name in the database, tokens and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    /// The role named `s` (exactly `admin` or `agent`).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }

    /// The scopes an access token of this role carries.
    pub fn scopes(self) -> Vec<Scope> {
        match self {
            Role::Admin => Scope::ALL.to_vec(),
            Role::Agent => vec![Scope::ConversationsRead, Scope::MessagesSend],
        }
    }
}

/// The `scope` claim: scopes space separated.
pub fn format_scopes(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The known scopes of a space-separated `scope` claim, sorted, without
/// duplicates.
pub fn parse_scopes(claim: &str) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = claim.split_whitespace().filter_map(Scope::parse).collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The `scp` claim, which identity providers write as an array or as one
/// space-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ScpClaim {
    /// `"scp": ["a", "b"]`.
    List(Vec<String>),
    /// `"scp": "a b"`.
    Text(String),
}

/// The scopes of an OIDC token: `scope` when present, else `scp`.
pub fn oidc_scopes(scope: Option<&str>, scp: Option<&ScpClaim>) -> Vec<Scope> {
    match (scope, scp) {
        (Some(s), _) => parse_scopes(s),
        (None, Some(ScpClaim::Text(s))) => parse_scopes(s),
        (None, Some(ScpClaim::List(list))) => parse_scopes(&list.join(" ")),
        (None, None) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_scopes() {
        assert_eq!(
            format_scopes(&Role::Admin.scopes()),
            "conversations:read messages:send admin"
        );
        assert_eq!(
            format_scopes(&Role::Agent.scopes()),
            "conversations:read messages:send"
        );
        assert!(!Role::Agent.scopes().contains(&Scope::Admin));
        for role in [Role::Admin, Role::Agent] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(parse_scopes(&format_scopes(&role.scopes())), role.scopes());
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse(""), None);
    }

    #[test]
    fn scope_claims_keep_only_known_scopes() {
        assert_eq!(
            parse_scopes("  admin openid admin conversations:read  "),
            vec![Scope::ConversationsRead, Scope::Admin]
        );
        assert_eq!(parse_scopes(""), vec![]);
        assert_eq!(parse_scopes("conversations:readx ADMIN"), vec![]);
    }

    #[test]
    fn oidc_scopes_come_from_scope_then_scp() {
        let list = ScpClaim::List(vec!["messages:send".into(), "profile".into()]);
        let text = ScpClaim::Text("admin email".into());
        assert_eq!(oidc_scopes(None, Some(&list)), vec![Scope::MessagesSend]);
        assert_eq!(oidc_scopes(None, Some(&text)), vec![Scope::Admin]);
        assert_eq!(
            oidc_scopes(Some("conversations:read"), Some(&list)),
            vec![Scope::ConversationsRead]
        );
        assert_eq!(oidc_scopes(None, None), vec![]);
        let parsed: ScpClaim = serde_json::from_str(r#"["a","admin"]"#).unwrap();
        assert_eq!(oidc_scopes(None, Some(&parsed)), vec![Scope::Admin]);
    }
}
