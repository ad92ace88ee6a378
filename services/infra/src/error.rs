//! Client-facing error codes (API.md §1) and their single mapping to gRPC.
//!
//! Services return [`AppError`]; across a gRPC boundary it travels as a
//! `tonic::Status` whose `gochat-code` metadata entry keeps the exact code
//! (`ALREADY_FRIENDS` and `ALREADY_REQUESTED` are both `ALREADY_EXISTS` in
//! gRPC terms). The gateway turns it back into HTTP status + JSON envelope,
//! or a WebSocket `error` frame.

use std::fmt;

use tonic::Code;

const CODE_KEY: &str = "gochat-code";

/// Every error code a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ValidationError,
    UserExists,
    AlreadyRequested,
    AlreadyFriends,
    AuthFailed,
    Unauthorized,
    Forbidden,
    NotFound,
    ConversationNotFound,
    RateLimited,
    MessageTooLarge,
    InvalidMessage,
    /// A bug or an unexpected state: HTTP 500.
    Internal,
    /// A backend is down or overloaded; retrying later helps: HTTP 503, code `INTERNAL`.
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::ValidationError,
        ErrorCode::UserExists,
        ErrorCode::AlreadyRequested,
        ErrorCode::AlreadyFriends,
        ErrorCode::AuthFailed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::ConversationNotFound,
        ErrorCode::RateLimited,
        ErrorCode::MessageTooLarge,
        ErrorCode::InvalidMessage,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    /// The code as clients see it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::UserExists => "USER_EXISTS",
            ErrorCode::AlreadyRequested => "ALREADY_REQUESTED",
            ErrorCode::AlreadyFriends => "ALREADY_FRIENDS",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ConversationNotFound => "CONVERSATION_NOT_FOUND",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::Internal | ErrorCode::Unavailable => "INTERNAL",
        }
    }

    /// HTTP status for the REST API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationError | ErrorCode::InvalidMessage => 400,
            ErrorCode::UserExists | ErrorCode::AlreadyRequested | ErrorCode::AlreadyFriends => 409,
            ErrorCode::AuthFailed | ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::ConversationNotFound => 404,
            ErrorCode::RateLimited => 429,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    fn grpc(self) -> Code {
        match self {
            ErrorCode::ValidationError | ErrorCode::InvalidMessage => Code::InvalidArgument,
            ErrorCode::UserExists | ErrorCode::AlreadyRequested | ErrorCode::AlreadyFriends => Code::AlreadyExists,
            ErrorCode::AuthFailed | ErrorCode::Unauthorized => Code::Unauthenticated,
            ErrorCode::Forbidden => Code::PermissionDenied,
            ErrorCode::NotFound | ErrorCode::ConversationNotFound => Code::NotFound,
            ErrorCode::RateLimited => Code::ResourceExhausted,
            ErrorCode::MessageTooLarge => Code::OutOfRange,
            ErrorCode::Internal => Code::Internal,
            ErrorCode::Unavailable => Code::Unavailable,
        }
    }

    fn wire_name(self) -> &'static str {
        match self {
            ErrorCode::Unavailable => "UNAVAILABLE",
            other => other.as_str(),
        }
    }

    fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.wire_name() == s)
    }

    /// Whether the same internal call may succeed if repeated later (a
    /// backend outage). `RATE_LIMITED` is an answer for the client, not a
    /// reason for a consumer to hold its partition.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with the code a client will see and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The gRPC form, carrying the exact code in metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code.grpc(), self.message.clone());
        if let Ok(v) = self.code.wire_name().parse() {
            status.metadata_mut().insert(CODE_KEY, v);
        }
        status
    }

    /// Reads a status from a GoChat service (or any gRPC peer).
    pub fn from_status(status: &tonic::Status) -> Self {
        let code =
            status.metadata().get(CODE_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::from_wire).unwrap_or(match status.code() {
                Code::InvalidArgument => ErrorCode::ValidationError,
                Code::Unauthenticated => ErrorCode::Unauthorized,
                Code::PermissionDenied => ErrorCode::Forbidden,
                Code::NotFound => ErrorCode::NotFound,
                Code::ResourceExhausted => ErrorCode::RateLimited,
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            });
        Self { code, message: status.message().to_string() }
    }
}

impl From<AppError> for tonic::Status {
    fn from(e: AppError) -> Self {
        e.to_status()
    }
}

impl From<tonic::Status> for AppError {
    fn from(s: tonic::Status) -> Self {
        AppError::from_status(&s)
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::{Conflict, StoreError};
        match e {
            StoreError::Conflict(Conflict::UsernameTaken) => AppError::new(ErrorCode::UserExists, "username already taken"),
            StoreError::Conflict(Conflict::AlreadyRequested) => {
                AppError::new(ErrorCode::AlreadyRequested, "a friend request between you is already pending")
            }
            StoreError::Conflict(Conflict::AlreadyFriends) => AppError::new(ErrorCode::AlreadyFriends, "you are already friends"),
            StoreError::Invalid(m) => AppError::validation(m),
            StoreError::Backend(err) => {
                tracing::error!(error = %err, "database error");
                AppError::unavailable("database unavailable")
            }
            StoreError::Migrate(err) => {
                tracing::error!(error = %err, "migration error");
                AppError::internal("database schema error")
            }
        }
    }
}

impl From<crate::bus::BusError> for AppError {
    fn from(e: crate::bus::BusError) -> Self {
        tracing::error!(error = %e, "bus error");
        AppError::unavailable("message bus unavailable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_grpc_round_trip() {
        for code in ErrorCode::ALL {
            let err = AppError::new(code, "why");
            let back = AppError::from_status(&err.to_status());
            assert_eq!(back, err, "{code:?}");
        }
    }

    #[test]
    fn foreign_statuses_map_by_grpc_code() {
        let e = AppError::from_status(&tonic::Status::unavailable("down"));
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.code.http_status(), 503);
        assert_eq!(e.code.as_str(), "INTERNAL");
        let e = AppError::from_status(&tonic::Status::permission_denied("no"));
        assert_eq!(e.code, ErrorCode::Forbidden);
    }
}
