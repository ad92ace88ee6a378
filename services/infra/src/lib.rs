//! gochat-infra
