//! Examples only; see `quickstart.rs`.
