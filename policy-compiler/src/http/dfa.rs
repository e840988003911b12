//! The rules of one port → one DFA table the kernel walks (`DfaRow`s).
//!
//! The kernel reads `METHOD SP PATH SP HOST` (normalised by `http1`) through a single
//! DFA: each rule becomes `^(?:method) (?:path) (?:host)$` (a missing field matches
//! anything; none of the three fields can contain a space, so the separators cannot
//! slide), and all rules of the port are one multi-pattern DFA whose accepting rows carry
//! the lowest matching rule. One walk per request, however many rules.
use moat_dataplane_common::l7::DfaRow;
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use super::rules::PatternError;
use crate::k8s::HttpRule;

/// Rows one port's DFA may use (the node-wide table holds 16,384 in two halves).
pub const MAX_PORT_ROWS: usize = 4096;

/// A port's table: `rows[0]` is the dead state, `rows[1]` the start; `next` values are
/// indexes into `rows` (the agent rebases them where it places the table).
#[derive(Debug, Clone)]
pub struct PortDfa {
    pub rows: Vec<DfaRow>,
}

impl PortDfa {
    /// `rows` with every index moved by `base - 1` (row 1 lands at `base`; 0 stays dead).
    #[must_use]
    pub fn placed_at(&self, base: u16) -> Vec<DfaRow> {
        self.rows[1..]
            .iter()
            .map(|r| {
                let mut out = *r;
                for n in &mut out.next {
                    if *n != 0 {
                        *n = *n - 1 + base;
                    }
                }
                out
            })
            .collect()
    }

    /// Walks the table over `input` the way the kernel does: the matching rule index.
    #[must_use]
    pub fn first_match(&self, input: &[u8]) -> Option<usize> {
        let mut s = 1usize;
        for &b in input {
            s = usize::from(self.rows[s].next[usize::from(b)]);
            if s == 0 {
                return None;
            }
        }
        usize::from(self.rows[s].accept).checked_sub(1)
    }
}

/// A table that matches nothing (a start row with no way out, not accepting).
#[must_use]
pub fn deny_all() -> PortDfa {
    PortDfa {
        rows: vec![DfaRow::default(), DfaRow::default()],
    }
}

fn field(p: Option<&str>, any: &str) -> String {
    p.map_or_else(|| any.to_string(), |p| format!("(?:{p})"))
}

/// Builds the DFA of `rules` (`field` names them in errors, e.g. `MoatNetworkPolicy
/// web/api spec.ingress[0].toPorts[0].rules.http`).
///
/// # Errors
/// A pattern that does not compile, header conditions (not yet enforced in the kernel),
/// or a table over [`MAX_PORT_ROWS`].
pub fn build(rules: &[HttpRule], field_path: &str) -> Result<PortDfa, PatternError> {
    let err = |message: String| PatternError {
        field: field_path.to_string(),
        message,
    };
    let mut patterns = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        if !r.headers.is_empty() {
            return Err(PatternError {
                field: format!("{field_path}[{i}].headers"),
                message:
                    "header conditions are not enforced in the kernel yet; this rule is refused rather than ignored"
                        .into(),
            });
        }
        patterns.push(format!(
            "^{} {} {}$",
            field(r.method.as_deref(), "[^ ]+"),
            field(r.path.as_deref(), "[^ ]*"),
            field(r.host.as_deref(), "[^ ]*")
        ));
    }
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .match_kind(MatchKind::All)
                .minimize(true)
                .dfa_size_limit(Some(64 << 20))
                .determinize_size_limit(Some(64 << 20)),
        )
        .syntax(regex_automata::util::syntax::Config::new().unicode(false).utf8(false))
        .build_many(&patterns)
        .map_err(|e| err(format!("the rules do not compile to a DFA: {e}")))?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| err(format!("no anchored start state: {e}")))?;
    // Number the states reachable from the start (0 = dead, 1 = start).
    let mut ids = std::collections::HashMap::new();
    let mut order = vec![start];
    ids.insert(start, 1usize);
    let mut rows = vec![DfaRow::default()];
    let mut i = 0;
    while i < order.len() {
        let s = order[i];
        i += 1;
        let mut row = DfaRow::default();
        for b in 0..=255u8 {
            let n = dfa.next_state(s, b);
            if dfa.is_dead_state(n) || dfa.is_quit_state(n) {
                continue;
            }
            let id = *ids.entry(n).or_insert_with(|| {
                order.push(n);
                order.len()
            });
            if id > MAX_PORT_ROWS {
                return Err(err(format!(
                    "the {} rules of this port need more than {MAX_PORT_ROWS} DFA states; simplify or split them",
                    rules.len()
                )));
            }
            row.next[usize::from(b)] = id as u16;
        }
        let eoi = dfa.next_eoi_state(s);
        if dfa.is_match_state(eoi) {
            let first = (0..dfa.match_len(eoi))
                .map(|k| dfa.match_pattern(eoi, k).as_usize())
                .min()
                .unwrap_or(0);
            row.accept = first as u16 + 1;
        }
        rows.push(row);
    }
    Ok(PortDfa { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(m: Option<&str>, p: Option<&str>, h: Option<&str>) -> HttpRule {
        HttpRule {
            method: m.map(Into::into),
            path: p.map(Into::into),
            host: h.map(Into::into),
            ..HttpRule::default()
        }
    }

    #[test]
    fn one_walk_names_the_first_matching_rule() {
        let d = build(
            &[
                rule(Some("GET"), Some("/"), None),
                rule(Some("GET|HEAD"), Some("/public/.*"), None),
                rule(None, Some("/api/items"), Some("api\\.example")),
            ],
            "t",
        )
        .unwrap();
        assert_eq!(d.first_match(b"GET / backend"), Some(0));
        assert_eq!(d.first_match(b"HEAD /public/a.css b"), Some(1));
        assert_eq!(d.first_match(b"DELETE /api/items api.example"), Some(2));
        assert_eq!(d.first_match(b"DELETE /api/items other"), None);
        assert_eq!(d.first_match(b"GET /admin backend"), None);
        assert_eq!(d.first_match(b"GET /public backend"), None);
        assert_eq!(d.first_match(b"GET /x /public/y"), None, "fields cannot slide");
        // Placed elsewhere, the same walk.
        let placed = d.placed_at(100);
        assert_eq!(placed.len(), d.rows.len() - 1);
        assert!(placed.iter().flat_map(|r| r.next).all(|n| n == 0 || n >= 100));
    }

    #[test]
    fn a_thousand_exact_paths_fit_and_header_rules_are_refused() {
        let rules: Vec<HttpRule> = (0..1000)
            .map(|i| rule(Some("GET"), Some(&format!("/api/v1/items/{i}")), None))
            .collect();
        let d = build(&rules, "t").unwrap();
        assert!(d.rows.len() < MAX_PORT_ROWS, "{}", d.rows.len());
        assert_eq!(d.first_match(b"GET /api/v1/items/999 h"), Some(999));
        assert_eq!(d.first_match(b"GET /api/v1/items/1000 h"), None);
        let mut with_header = rule(Some("GET"), None, None);
        with_header.headers.push(("x-token".into(), None));
        let e = build(
            &[with_header],
            "MoatNetworkPolicy a/b spec.ingress[0].toPorts[0].rules.http",
        )
        .unwrap_err();
        assert_eq!(
            e.field,
            "MoatNetworkPolicy a/b spec.ingress[0].toPorts[0].rules.http[0].headers"
        );
    }
}
