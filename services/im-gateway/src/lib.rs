//! im-gateway
