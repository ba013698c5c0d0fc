//! Kubernetes label selectors (`matchLabels` and `matchExpressions` with In, NotIn, Exists
//! and DoesNotExist): validation with the field named, and matching against a label map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::PolicyError;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement; the empty selector selects everything.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator {
                    Operator::In => have.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => have.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => have.is_some(),
                    Operator::DoesNotExist => have.is_none(),
                }
            })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The checks Kubernetes makes: label keys and values well formed, values present for
    /// In and NotIn and absent for Exists and DoesNotExist.
    pub fn validate(&self, at: &str) -> Result<(), PolicyError> {
        for (k, v) in &self.match_labels {
            check_key(&format!("{at}.matchLabels"), k)?;
            check_value(&format!("{at}.matchLabels.{k}"), v)?;
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let here = format!("{at}.matchExpressions[{i}]");
            check_key(&format!("{here}.key"), &r.key)?;
            let needs_values = matches!(r.operator, Operator::In | Operator::NotIn);
            if needs_values == r.values.is_empty() {
                let why = match needs_values {
                    true => format!("{:?} needs at least one value", r.operator),
                    false => format!("{:?} takes no values", r.operator),
                };
                return Err(PolicyError {
                    field: format!("{here}.values"),
                    why,
                });
            }
            for (j, v) in r.values.iter().enumerate() {
                check_value(&format!("{here}.values[{j}]"), v)?;
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// `app=web,tier in (a,b)`, as kubectl shows selectors; `<all>` for the empty one.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = (self.match_labels.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        match parts.is_empty() {
            true => "<all>".into(),
            false => parts.join(","),
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters, alphanumeric at both ends with `-`, `_` and `.` inside.
pub fn check_key(field: &str, key: &str) -> Result<(), PolicyError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    if !prefix_ok || name.is_empty() || !is_label_text(name) {
        return Err(PolicyError {
            field: field.into(),
            why: format!("{key:?} is not a valid label key"),
        });
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters as a key's name part.
pub fn check_value(field: &str, value: &str) -> Result<(), PolicyError> {
    if !value.is_empty() && !is_label_text(value) {
        return Err(PolicyError {
            field: field.into(),
            why: format!("{value:?} is not a valid label value"),
        });
    }
    Ok(())
}

fn is_label_text(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    s.len() <= 63
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
        && s.bytes()
            .all(|b| alnum(b) || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(json: Value) -> LabelSelector {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_operator_matches_as_kubernetes_defines_it() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let bare = labels(&[]);
        let cases = [
            (serde_json::json!({}), true, true),
            (
                serde_json::json!({"matchLabels": {"app": "web"}}),
                true,
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "x"]}]}),
                true,
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
                false,
                true,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
                true,
                false,
            ),
            (
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
                false,
                true,
            ),
        ];
        for (json, on_web, on_bare) in cases {
            let s = sel(json.clone());
            assert_eq!(s.matches(&web), on_web, "{json}");
            assert_eq!(s.matches(&bare), on_bare, "{json}");
        }
    }

    #[test]
    fn malformed_selectors_name_the_field() {
        let s = sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]}));
        let e = s.validate("spec.podSelector").unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].values");
        let s = sel(serde_json::json!({"matchLabels": {"-bad": "x"}}));
        assert!(s.validate("x").unwrap_err().why.contains("-bad"));
        let s = sel(serde_json::json!({"matchLabels": {"app": "a b"}}));
        assert_eq!(s.validate("x").unwrap_err().field, "x.matchLabels.app");
        assert!(check_key("k", "example.com/app").is_ok());
        assert!(check_key("k", "Example.com/app").is_err());
    }
}
