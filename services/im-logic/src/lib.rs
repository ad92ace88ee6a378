//! im-logic
