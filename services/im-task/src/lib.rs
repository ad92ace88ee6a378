//! im-task
