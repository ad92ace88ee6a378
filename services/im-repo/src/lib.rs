//! im-repo
