//! Integration tests: the real app over real HTTP and WebSocket.

mod auth;
mod backend;
mod cli;
mod conversations;
mod durability;
mod friends;
mod helpers;
mod http_contract;
mod messaging;
mod pipeline;
mod ws_protocol;
