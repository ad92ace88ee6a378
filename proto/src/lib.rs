//! Generated protobuf types and tonic services for GoChat.
//!
//! # Layout
//! - [`common`]: domain objects (User, Message, Conversation, ...).
//! - [`repo`]: the `Repo` service (database and KV access).
//! - [`logic`]: the `Logic` service (business rules).
//! - [`events`]: records carried on the message bus.
//! - [`gateway`]: the gateway's push service.

#![allow(clippy::all, clippy::pedantic)]

pub mod common {
    tonic::include_proto!("gochat.common");
}
pub mod repo {
    tonic::include_proto!("gochat.repo");
}
pub mod logic {
    tonic::include_proto!("gochat.logic");
}
pub mod events {
    tonic::include_proto!("gochat.events");
}
pub mod gateway {
    tonic::include_proto!("gochat.gateway");
}

pub use prost::Message as ProstMessage;
