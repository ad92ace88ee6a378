//! gateway-core: to be written (see the engine task).
pub mod api;
pub use api::*;
