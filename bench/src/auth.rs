//! HS256 access tokens with the claims of `services/infra/src/auth.rs`
//! (sub, jti, typ, exp, iat, guest, name), verified locally: signature,
//! expiry and type. The bench servers have no revocation set.

use gochat_infra::auth::{ACCESS, Claims, TokenError, TokenKeys};

/// Why a handshake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "missing token",
            AuthError::Invalid => "invalid token",
        })
    }
}

impl std::error::Error for AuthError {}

/// A verified user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// Verifies (and mints) tokens with one HMAC secret, with the server's own
/// signer (`gochat_infra::auth`).
#[derive(Clone)]
pub struct Keys {
    keys: TokenKeys,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Keys { keys: TokenKeys::new(secret) }
    }

    /// Reads the secret from a file, trimming a trailing newline.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let raw = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read jwt secret {}: {e}", path.display()))?;
        let secret = raw.strip_suffix(b"\n").unwrap_or(&raw);
        anyhow::ensure!(!secret.is_empty(), "jwt secret file {} is empty", path.display());
        Ok(Keys::new(secret))
    }

    /// Checks signature, expiry, `typ == "access"` and a positive numeric `sub`.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > 4096 {
            return Err(AuthError::Invalid);
        }
        let claims = self.keys.verify(token, ACCESS).map_err(|_: TokenError| AuthError::Invalid)?;
        let id = claims.sub.parse::<u64>().ok().filter(|id| *id > 0).ok_or(AuthError::Invalid)?;
        Ok(User { id, name: claims.name })
    }

    /// An access token for `user_id` valid for `ttl_secs`.
    pub fn mint(&self, user_id: u64, ttl_secs: i64) -> String {
        let now = unix_secs();
        let claims = Claims {
            sub: user_id.to_string(),
            jti: format!("bench-{user_id}-{now}"),
            typ: ACCESS.into(),
            exp: now + ttl_secs,
            iat: now,
            guest: false,
            name: format!("user{user_id}"),
            rjti: None,
        };
        // HS256 over a plain struct cannot fail.
        self.keys.issue(&claims).unwrap_or_default()
    }

    /// Finds the token in `?token=` or `Authorization: Bearer` and verifies it.
    pub fn verify_request(&self, query: Option<&str>, authorization: Option<&str>) -> Result<User, AuthError> {
        let from_query = query.and_then(|q| q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == "token").map(|(_, v)| v));
        let from_header = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        self.verify(from_query.or(from_header).unwrap_or(""))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let keys = Keys::new(b"secret");
        let t = keys.mint(7, 60);
        assert_eq!(keys.verify(&t), Ok(User { id: 7, name: "user7".into() }));
        assert_eq!(Keys::new(b"other").verify(&t), Err(AuthError::Invalid));
        assert_eq!(keys.verify(""), Err(AuthError::Missing));
        assert_eq!(keys.verify_request(Some(&format!("a=1&token={t}")), None).map(|u| u.id), Ok(7));
        assert_eq!(keys.verify_request(None, Some(&format!("Bearer {t}"))).map(|u| u.id), Ok(7));
        assert_eq!(keys.verify(&keys.mint(7, -60)), Err(AuthError::Invalid));
    }
}
