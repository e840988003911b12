//! Label selectors (`metav1.LabelSelector`) and their matching rules.
//!
//! Kubernetes semantics: every `matchLabels` pair and every `matchExpressions` requirement must
//! hold (AND); an empty selector matches everything; `NotIn` and `DoesNotExist` match when the
//! key is absent.
use std::collections::BTreeMap;
use std::fmt;

/// `matchExpressions[].operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    /// Parses the API spelling (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "In" => Self::In,
            "NotIn" => Self::NotIn,
            "Exists" => Self::Exists,
            "DoesNotExist" => Self::DoesNotExist,
            _ => return None,
        })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        })
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

/// A label selector; the default (empty) selector matches every object.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` pair and every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// True for `{}`: selects everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    /// `kubectl`-like rendering: `app=web,tier in (a,b),!legacy`; `{}` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sel(reqs: Vec<Requirement>) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: reqs,
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&labels(&[])));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "web"), ("tier", "fe")]),
            match_expressions: vec![],
        };
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn in_operator() {
        let s = sel(vec![req("env", Operator::In, &["prod", "staging"])]);
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "staging")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_when_key_absent() {
        let s = sel(vec![req("env", Operator::NotIn, &["prod"])]);
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let e = sel(vec![req("env", Operator::Exists, &[])]);
        let d = sel(vec![req("env", Operator::DoesNotExist, &[])]);
        assert!(e.matches(&labels(&[("env", "")])));
        assert!(!e.matches(&labels(&[("other", "x")])));
        assert!(!d.matches(&labels(&[("env", "")])));
        assert!(d.matches(&labels(&[("other", "x")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut s = sel(vec![req("env", Operator::NotIn, &["prod"])]);
        s.match_labels.insert("app".into(), "web".into());
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
    }

    #[test]
    fn display_is_kubectl_like() {
        let mut s = sel(vec![
            req("env", Operator::In, &["a", "b"]),
            req("x", Operator::DoesNotExist, &[]),
        ]);
        s.match_labels.insert("app".into(), "web".into());
        assert_eq!(s.to_string(), "app=web,env in (a,b),!x");
        assert_eq!(LabelSelector::default().to_string(), "{}");
    }

    #[test]
    fn operator_parse() {
        assert_eq!(Operator::parse("NotIn"), Some(Operator::NotIn));
        assert_eq!(Operator::parse("notin"), None);
    }
}
