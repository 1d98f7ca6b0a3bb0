//! Write authorization (DESIGN §9): with `VISBIN_API_TOKEN` set, every
//! `POST` and `DELETE` needs `Authorization: Bearer <token>`. Several
//! comma-separated tokens are accepted alike, so a new one can be rolled
//! out before the old one is withdrawn. Tokens are compared as SHA-256
//! digests in constant time, against every configured token, so neither a
//! token's length nor how much of it matched shows in the time taken.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The tokens accepted for writes.
#[derive(Clone)]
pub struct WriteTokens(Vec<[u8; 32]>);

impl std::fmt::Debug for WriteTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteTokens({} configured)", self.0.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl WriteTokens {
    /// The tokens of a `VISBIN_API_TOKEN` value; `None` (writes open) when
    /// it is unset or names no token.
    pub fn parse(configured: Option<&str>) -> Option<WriteTokens> {
        let tokens: Vec<[u8; 32]> = configured?
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(digest)
            .collect();
        (!tokens.is_empty()).then_some(WriteTokens(tokens))
    }

    /// Whether an `Authorization` header value carries one of the tokens.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }) else {
            return false;
        };
        let given = digest(given);
        let matched = self
            .0
            .iter()
            .fold(subtle::Choice::from(0), |any, t| any | t.ct_eq(&given));
        matched.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_token_opens_writes_and_nothing_else_does() {
        let t = WriteTokens::parse(Some(" old , new,")).unwrap();
        assert!(t.accepts(Some("Bearer old")));
        assert!(t.accepts(Some("bearer new")));
        assert!(!t.accepts(Some("Bearer old,new")));
        assert!(!t.accepts(Some("Bearer ol")));
        assert!(!t.accepts(Some("Basic old")));
        assert!(!t.accepts(Some("old")));
        assert!(!t.accepts(None));
        assert!(WriteTokens::parse(Some(" , ")).is_none());
        assert!(WriteTokens::parse(None).is_none());
    }
}
