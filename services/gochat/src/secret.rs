//! The JWT signing secret. Configured explicitly (`auth.jwt_secret`) in
//! production; otherwise generated once and kept in `<data_dir>/jwt.secret`
//! (mode 0600) so tokens stay valid across restarts of `gochat up`.

use std::io::Write;
use std::path::Path;

/// Reads the secret file, creating it with 48 random bytes (hex) if missing.
pub fn load_or_create(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("jwt.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is shorter than 32 characters; delete it to generate a new one",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret: String = (0..48).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&path)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = load_or_create(dir.path()).expect("create");
        let b = load_or_create(dir.path()).expect("reuse");
        assert_eq!(a, b);
        assert_eq!(a.len(), 96);
        std::fs::write(dir.path().join("jwt.secret"), "short").expect("write");
        assert!(load_or_create(dir.path()).is_err());
    }
}
