//! Access tokens minted locally (`--auth secret`), exactly as the server
//! issues them: the server's own `gochat_infra::auth` claims and signer.

use std::path::Path;

use gochat_infra::auth::{ACCESS, Claims, TokenError, TokenKeys};

/// How long minted tokens live: longer than any run.
const TTL_SECS: i64 = 24 * 3600;

/// Signs access tokens with the server's secret.
#[derive(Clone)]
pub struct Minter {
    keys: TokenKeys,
}

impl Minter {
    /// The secret bytes as the server uses them: the file's content, trimmed.
    pub fn from_file(path: &Path) -> std::io::Result<Minter> {
        let s = std::fs::read_to_string(path)?;
        Ok(Minter::new(s.trim().as_bytes()))
    }

    pub fn new(secret: &[u8]) -> Minter {
        Minter { keys: TokenKeys::new(secret) }
    }

    /// An access token for user `id`.
    pub fn mint(&self, id: &str, name: &str, guest: bool) -> Result<String, TokenError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let claims = Claims {
            sub: id.to_string(),
            jti: format!("lg{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
            typ: ACCESS.into(),
            exp: now + TTL_SECS,
            iat: now,
            guest,
            name: name.to_string(),
            rjti: None,
        };
        self.keys.issue(&claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_the_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("jwt.secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        let m = Minter::from_file(&path).expect("read");
        let t = m.mint("42", "lg_1", true).expect("mint");
        // Trimmed: the newline is not part of the key.
        let claims = TokenKeys::new(b"0123456789abcdef0123456789abcdef").verify(&t, ACCESS).expect("verifies");
        assert_eq!(claims.sub, "42");
        assert!(claims.guest);
        assert_eq!(claims.name, "lg_1");
        assert!(claims.exp > claims.iat);
        assert!(TokenKeys::new(b"other").verify(&t, ACCESS).is_err());
        assert_ne!(m.mint("42", "lg_1", true).expect("mint"), t, "jti is random");
    }
}
