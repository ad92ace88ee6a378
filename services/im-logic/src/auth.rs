//! Accounts and tokens.
//!
//! Passwords are hashed with Argon2id (PHC string, random salt) on the
//! blocking pool, so a burst of logins cannot stall the async workers.
//! Logout revokes the access token and its refresh token, tells every
//! gateway (`token_revoked` user event) and closes the connections opened
//! with that token.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use gochat_infra::auth::{ACCESS, Claims, REFRESH};
use gochat_infra::bus::topics;
use gochat_infra::codec;
use gochat_infra::error::{AppError, AppResult, ErrorCode};
use gochat_infra::ids::random_token;
use gochat_infra::{now_ms, push, rpc};
use gochat_proto::common::{Member, User};
use gochat_proto::events::{Kick, TokenRevoked, UserEvent, downstream_message::Payload, user_event};
use gochat_proto::logic::{AuthTokens, Credentials, LogoutRequest};
use gochat_proto::repo::{AddMembersRequest, CreateUserRequest, RevokeTokenRequest, UserByNameRequest, UserIds};
use tonic::Request;

use crate::{Logic, MEMBER, WORLD_ID};

/// Close code sent to connections of a logged-out token.
pub const CLOSE_LOGGED_OUT: u16 = 4003;

fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

async fn hash_password(password: String) -> AppResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|_| AppError::internal("password hashing was interrupted"))?
    .map_err(|e| AppError::internal(format!("password hashing failed: {e}")))
}

async fn verify_password(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

impl Logic {
    pub async fn register(&self, c: Credentials) -> AppResult<User> {
        if !valid_username(&c.username) {
            return Err(AppError::validation("username must be 3-32 characters of letters, digits, '_', '.' or '-'"));
        }
        if c.username.to_ascii_lowercase().starts_with("guest_") {
            return Err(AppError::validation("usernames starting with guest_ are reserved"));
        }
        let chars = c.password.chars().count();
        if !(6..=128).contains(&chars) {
            return Err(AppError::validation("password must be 6-128 characters"));
        }
        let now = now_ms();
        let user = User {
            id: self.ids.next_id(),
            username: c.username,
            password_hash: hash_password(c.password).await?,
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        let mut user = rpc(self.repo.create_user(Request::new(CreateUserRequest { user: Some(user) }))).await.map_err(|e| {
            if e.code == ErrorCode::ValidationError || e.code == ErrorCode::UserExists {
                AppError::new(ErrorCode::UserExists, "username already taken")
            } else {
                e
            }
        })?;
        user.password_hash.clear();
        Ok(user)
    }

    pub async fn login(&self, c: Credentials) -> AppResult<AuthTokens> {
        let failed = || AppError::new(ErrorCode::AuthFailed, "wrong username or password");
        if c.username.is_empty() || c.username.len() > 64 || c.password.is_empty() || c.password.len() > 512 {
            return Err(failed());
        }
        let user = match rpc(self.repo.get_user_by_name(Request::new(UserByNameRequest { username: c.username }))).await {
            Ok(u) => u,
            Err(e) if e.code == ErrorCode::NotFound => return Err(failed()),
            Err(e) => return Err(e),
        };
        if user.is_guest || user.password_hash.is_empty() || !verify_password(c.password, user.password_hash.clone()).await {
            return Err(failed());
        }
        if user.status != 0 {
            return Err(AppError::forbidden("this account is disabled"));
        }
        self.tokens(user)
    }

    pub async fn guest(&self) -> AppResult<AuthTokens> {
        let now = now_ms();
        let user = User {
            id: self.ids.next_id(),
            username: format!("guest_{}", random_token(12)),
            is_guest: true,
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        let user = rpc(self.repo.create_user(Request::new(CreateUserRequest { user: Some(user) }))).await?;
        let member = Member { conversation_id: WORLD_ID.into(), user_id: user.id, role: MEMBER, joined_at_ms: now, ..Default::default() };
        rpc(self.repo.add_members(Request::new(AddMembersRequest { conversation_id: WORLD_ID.into(), members: vec![member] }))).await?;
        let event = UserEvent { user_id: user.id, event: Some(user_event::Event::GuestCreated(user.clone())), timestamp_ms: now };
        let trace = codec::new_trace_id();
        if let Err(e) = self.bus.produce(vec![codec::encode(topics::USER_EVENTS, user.id.to_string(), &event, &trace)]).await {
            // The guest exists and can chat; only the announcement is lost.
            tracing::warn!(error = %e, "could not publish guest_created");
        }
        self.tokens(user)
    }

    pub async fn refresh(&self, refresh_token: &str) -> AppResult<AuthTokens> {
        let unauthorized = || AppError::unauthorized("invalid or expired refresh token");
        let claims = self.keys.verify(refresh_token, REFRESH).map_err(|_| unauthorized())?;
        let user_id = claims.user_id().ok_or_else(unauthorized)?;
        // Rotate first: of two concurrent refreshes with one token, only the
        // one that revokes it gets a new pair.
        let rotated =
            rpc(self.repo.revoke_token(Request::new(RevokeTokenRequest { jti: claims.jti.clone(), expires_at_ms: claims.exp * 1000 })))
                .await?;
        if !rotated.newly_revoked {
            return Err(unauthorized());
        }
        let user = rpc(self.repo.get_users(Request::new(UserIds { user_ids: vec![user_id] })))
            .await?
            .users
            .into_iter()
            .next()
            .ok_or_else(unauthorized)?;
        if user.status != 0 {
            return Err(AppError::forbidden("this account is disabled"));
        }
        self.tokens(user)
    }

    pub async fn logout(&self, r: LogoutRequest) -> AppResult<()> {
        let caller = crate::caller(r.caller)?;
        if r.jti.is_empty() {
            return Err(AppError::validation("token id missing"));
        }
        let mut revoked = vec![(r.jti.clone(), r.expires_at * 1000)];
        if !r.refresh_jti.is_empty() {
            revoked.push((r.refresh_jti.clone(), r.refresh_expires_at.max(r.expires_at) * 1000));
        }
        let trace = codec::new_trace_id();
        let mut records = Vec::new();
        for (jti, exp) in revoked {
            rpc(self.repo.revoke_token(Request::new(RevokeTokenRequest { jti: jti.clone(), expires_at_ms: exp }))).await?;
            let ev = UserEvent {
                user_id: caller.user_id,
                event: Some(user_event::Event::TokenRevoked(TokenRevoked { jti, expires_at_ms: exp })),
                timestamp_ms: now_ms(),
            };
            records.push(codec::encode(topics::USER_EVENTS, caller.user_id.to_string(), &ev, &trace));
        }
        self.bus.produce(records).await?;
        // Close the connections opened with this token, wherever they are.
        let presence = self.presence_of(&[caller.user_id]).await?;
        let kick = Payload::Kick(Kick {
            user_id: caller.user_id,
            jti: r.jti,
            close_code: u32::from(CLOSE_LOGGED_OUT),
            reason: "logged out".into(),
        });
        push::push(self.bus.as_ref(), &caller.user_id.to_string(), &trace, &presence, &kick, "", None).await?;
        Ok(())
    }

    /// Issues a new access/refresh pair for the user.
    pub(crate) fn tokens(&self, mut user: User) -> AppResult<AuthTokens> {
        user.password_hash.clear();
        let now = now_ms() / 1000;
        let access_exp = now + self.config.get().auth.access_ttl_secs as i64;
        let refresh_jti = random_token(24);
        let access = Claims {
            sub: user.id.to_string(),
            jti: random_token(24),
            typ: ACCESS.into(),
            exp: access_exp,
            iat: now,
            guest: user.is_guest,
            name: user.username.clone(),
            rjti: Some(refresh_jti.clone()),
        };
        let refresh = Claims {
            sub: user.id.to_string(),
            jti: refresh_jti,
            typ: REFRESH.into(),
            exp: now + self.config.get().auth.refresh_ttl_secs as i64,
            iat: now,
            guest: user.is_guest,
            name: user.username.clone(),
            rjti: None,
        };
        let sign = |c: &Claims| self.keys.issue(c).map_err(|e| AppError::internal(format!("cannot sign token: {e}")));
        Ok(AuthTokens { access_token: sign(&access)?, refresh_token: sign(&refresh)?, expires_at: access_exp, user: Some(user) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        assert!(valid_username("bob"));
        assert!(valid_username("a.b-c_d9"));
        assert!(!valid_username("ab"));
        assert!(!valid_username(&"x".repeat(33)));
        assert!(!valid_username("bad name"));
        assert!(!valid_username("ünï"));
        assert!(!valid_username("x'; DROP"));
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let h = hash_password("secret1".into()).await.expect("hash");
        assert!(h.starts_with("$argon2"));
        assert!(verify_password("secret1".into(), h.clone()).await);
        assert!(!verify_password("secret2".into(), h).await);
        assert!(!verify_password("x".into(), "not a phc string".into()).await);
    }
}
