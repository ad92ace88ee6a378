//! Access tokens minted locally (`--auth secret`), exactly as the server
//! issues them (`gochat_infra::auth::Claims`, HS256).

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// How long minted tokens live: longer than any run.
const TTL_SECS: i64 = 24 * 3600;

/// The server's access-token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub jti: String,
    pub typ: String,
    pub exp: i64,
    pub iat: i64,
    pub guest: bool,
    pub name: String,
}

/// Signs access tokens with the server's secret.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
}

impl Minter {
    /// The secret bytes as the server uses them: the file's content, trimmed.
    pub fn from_file(path: &Path) -> std::io::Result<Minter> {
        let s = std::fs::read_to_string(path)?;
        Ok(Minter::new(s.trim().as_bytes()))
    }

    pub fn new(secret: &[u8]) -> Minter {
        Minter { key: EncodingKey::from_secret(secret) }
    }

    /// An access token for user `id`.
    pub fn mint(&self, id: &str, name: &str, guest: bool) -> Result<String, jsonwebtoken::errors::Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let claims = Claims {
            sub: id.to_string(),
            jti: format!("lg{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
            typ: "access".into(),
            exp: now + TTL_SECS,
            iat: now,
            guest,
            name: name.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_verify_with_the_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("jwt.secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        let m = Minter::from_file(&path).expect("read");
        let t = m.mint("42", "lg_1", true).expect("mint");
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        // Trimmed: the newline is not part of the key.
        let data =
            jsonwebtoken::decode::<Claims>(&t, &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"), &v).expect("verifies");
        assert_eq!(data.claims.sub, "42");
        assert_eq!(data.claims.typ, "access");
        assert!(data.claims.guest);
        assert_eq!(data.claims.name, "lg_1");
        assert!(data.claims.exp > data.claims.iat);
        assert!(jsonwebtoken::decode::<Claims>(&t, &DecodingKey::from_secret(b"other"), &v).is_err());
        assert_ne!(m.mint("42", "lg_1", true).expect("mint"), t, "jti is random");
    }
}
