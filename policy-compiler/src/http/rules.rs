//! HTTP rules → anchored DFAs within the kernel's budget, and matching a request head.
//!
//! `method`, `path` and `host` are regular expressions anchored at both ends (Cilium's
//! semantics). Each compiles to a dense DFA; a pattern whose DFA has more states than the
//! kernel's bounded loop can walk is refused at apply time with the policy and rule named,
//! and never silently disables the endpoint's other rules.
use regex_automata::dfa::{dense, Automaton};
use regex_automata::{Anchored, Input};

use super::request::Head;
use crate::k8s::HttpRule;

/// DFA states one pattern may have (the kernel walks a table of this many rows).
pub const MAX_STATES: usize = 256;

/// A pattern that cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PatternError {
    /// `…rules.http[1].path`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Pattern {
    source: String,
    dfa: dense::DFA<Vec<u32>>,
}

impl Pattern {
    fn compile(source: &str, field: &str) -> Result<Self, PatternError> {
        let err = |message: String| PatternError {
            field: field.to_string(),
            message,
        };
        let anchored = format!("^(?:{source})$");
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(regex_automata::dfa::StartKind::Anchored)
                    .minimize(true)
                    .dfa_size_limit(Some(1 << 20))
                    .determinize_size_limit(Some(1 << 22)),
            )
            .syntax(regex_automata::util::syntax::Config::new().unicode(false).utf8(false))
            .build(&anchored)
            .map_err(|e| err(format!("{source:?} is not a regular expression Moat can compile: {e}")))?;
        // The transition table dominates the DFA's memory: this slightly over-counts,
        // which errs on the refusing side.
        let states = dfa.memory_usage() / (dfa.stride() * 4);
        if states > MAX_STATES {
            return Err(err(format!(
                "{source:?} needs {states} DFA states; the kernel walks at most {MAX_STATES} (simplify the pattern or split the rule)"
            )));
        }
        Ok(Self {
            source: source.to_string(),
            dfa,
        })
    }

    fn matches(&self, s: &str) -> bool {
        let input = Input::new(s).anchored(Anchored::Yes);
        matches!(self.dfa.try_search_fwd(&input), Ok(Some(m)) if m.offset() == s.len())
    }
}

/// One compiled `rules.http[]` entry.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    method: Option<Pattern>,
    path: Option<Pattern>,
    host: Option<Pattern>,
    headers: Vec<(String, Option<String>)>,
}

impl CompiledRule {
    /// Compiles one rule; `field` is its path (`spec.ingress[0].toPorts[0].rules.http[2]`).
    ///
    /// # Errors
    /// A pattern that is not a regular expression or is over the kernel's budget.
    pub fn compile(rule: &HttpRule, field: &str) -> Result<Self, PatternError> {
        let pat = |p: &Option<String>, name: &str| {
            p.as_deref()
                .map(|s| Pattern::compile(s, &format!("{field}.{name}")))
                .transpose()
        };
        Ok(Self {
            method: pat(&rule.method, "method")?,
            path: pat(&rule.path, "path")?,
            host: pat(&rule.host, "host")?,
            headers: rule.headers.clone(),
        })
    }

    /// Whether the request matches every field the rule gives.
    #[must_use]
    pub fn matches(&self, head: &Head) -> bool {
        self.method.as_ref().is_none_or(|p| p.matches(&head.method))
            && self.path.as_ref().is_none_or(|p| p.matches(&head.path))
            && self.host.as_ref().is_none_or(|p| p.matches(&head.host))
            && self.headers.iter().all(|(name, value)| {
                head.headers
                    .iter()
                    .any(|(n, v)| n == name && value.as_ref().is_none_or(|want| v == want))
            })
    }

    /// The patterns as written, for `policy explain`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, p) in [("method", &self.method), ("path", &self.path), ("host", &self.host)] {
            if let Some(p) = p {
                parts.push(format!("{name} {:?}", p.source));
            }
        }
        for (n, v) in &self.headers {
            parts.push(match v {
                Some(v) => format!("header {n}: {v}"),
                None => format!("header {n}"),
            });
        }
        if parts.is_empty() {
            "any request".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The first rule (by index) that allows `head`, if any: a request on a port with HTTP
/// rules passes only when some rule matches it.
#[must_use]
pub fn first_match(rules: &[CompiledRule], head: &Head) -> Option<usize> {
    rules.iter().position(|r| r.matches(head))
}
