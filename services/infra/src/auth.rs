//! Access and refresh tokens (JWT, HS256) and the revocation set.
//!
//! Logic issues tokens; gateways verify them locally (signature + expiry)
//! and consult a local [`RevokedSet`] kept fresh by `token_revoked` events,
//! so no network round trip is needed per request or per handshake.
//!
//! | claim | meaning |
//! |---|---|
//! | `sub` | user id (decimal) |
//! | `jti` | token id (revocation key) |
//! | `typ` | `access` or `refresh` |
//! | `rjti` | access only: the jti of its refresh token (revoked with it on logout) |
//! | `guest`, `name` | whether the user is a guest, and the username |

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// Clock skew tolerated when checking `exp`.
pub const LEEWAY_SECS: u64 = 5;

/// Token type claim values.
pub const ACCESS: &str = "access";
pub const REFRESH: &str = "refresh";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub jti: String,
    pub typ: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default)]
    pub guest: bool,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rjti: Option<String>,
}

impl Claims {
    /// The user id in `sub`.
    pub fn user_id(&self) -> Option<i64> {
        self.sub.parse().ok().filter(|id| *id > 0)
    }
}

/// Why a token was refused. Clients only ever see `UNAUTHORIZED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("wrong token type")]
    WrongType,
    #[error("invalid token")]
    Invalid,
}

/// Signs and verifies tokens with one HMAC secret.
#[derive(Clone)]
pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { enc: EncodingKey::from_secret(secret), dec: DecodingKey::from_secret(secret), validation }
    }

    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc).map_err(|_| TokenError::Invalid)
    }

    /// Checks signature, expiry and type; not revocation.
    pub fn verify(&self, token: &str, typ: &str) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        if data.claims.typ != typ {
            return Err(TokenError::WrongType);
        }
        if data.claims.user_id().is_none() {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }
}

/// A stable 64-bit tag for a token id (FNV-1a), used to find the
/// connections opened with one token.
pub fn tag_of(jti: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in jti.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Revoked token ids with their expiry (ms); shared by a gateway's threads.
/// Read on every authenticated request, written on logout events only.
#[derive(Clone, Default)]
pub struct RevokedSet {
    inner: Arc<RwLock<HashMap<String, i64>>>,
}

impl RevokedSet {
    pub fn insert(&self, jti: &str, expires_at_ms: i64) {
        self.inner.write().insert(jti.to_string(), expires_at_ms);
    }

    pub fn contains(&self, jti: &str) -> bool {
        self.inner.read().contains_key(jti)
    }

    /// Forgets entries whose token has expired anyway.
    pub fn purge_expired(&self, now_ms: i64) {
        self.inner.write().retain(|_, exp| *exp > now_ms);
    }

    pub fn len(&self) -> usize {
        self.inner.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verifies an access token against the keys and the revoked set.
pub fn verify_access(keys: &TokenKeys, revoked: &RevokedSet, token: &str) -> Result<Claims, TokenError> {
    let claims = keys.verify(token, ACCESS)?;
    if revoked.contains(&claims.jti) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(typ: &str, exp: i64) -> Claims {
        Claims {
            sub: "42".into(),
            jti: "j1".into(),
            typ: typ.into(),
            exp,
            iat: 0,
            guest: false,
            name: "alice".into(),
            rjti: Some("r1".into()),
        }
    }

    fn now() -> i64 {
        crate::now_ms() / 1000
    }

    #[test]
    fn issued_tokens_verify_with_the_same_secret_only() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = keys.issue(&claims(ACCESS, now() + 60)).expect("issue");
        assert_eq!(keys.verify(&t, ACCESS).expect("valid").user_id(), Some(42));
        let other = TokenKeys::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify(&t, ACCESS), Err(TokenError::Invalid));
        assert_eq!(keys.verify(&t, REFRESH), Err(TokenError::WrongType));
        assert_eq!(keys.verify("garbage", ACCESS), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_and_revoked_tokens_fail() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = keys.issue(&claims(ACCESS, now() - 60)).expect("issue");
        assert_eq!(keys.verify(&t, ACCESS), Err(TokenError::Expired));
        let t = keys.issue(&claims(ACCESS, now() + 60)).expect("issue");
        let revoked = RevokedSet::default();
        assert!(verify_access(&keys, &revoked, &t).is_ok());
        revoked.insert("j1", crate::now_ms() + 60_000);
        assert_eq!(verify_access(&keys, &revoked, &t), Err(TokenError::Revoked));
        revoked.purge_expired(crate::now_ms() + 120_000);
        assert!(revoked.is_empty());
    }

    #[test]
    fn tags_differ_per_token() {
        assert_ne!(tag_of("a"), tag_of("b"));
        assert_eq!(tag_of("a"), tag_of("a"));
    }
}
