//! NetworkPolicy, agent side: identities for pods, compile, diff against the maps, apply
//! make-before-break (`enforcer`). The compiling itself is pure and lives in the
//! `moat-policy-compiler` crate.
pub mod enforcer;

pub use enforcer::{mode_name, DoesNotFit, Enforcer, Settings};
