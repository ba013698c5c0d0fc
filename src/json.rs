//! Reading flannel's JSON the way flannel's Go decoder reads it (keys case-insensitive, the
//! last occurrence wins, `null` leaves a default), and the errors that name a field and its
//! value. A leaf: the network config and every backend's settings are read with these.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A config that weft refuses, with the field and the value that made it refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config must be a JSON object, found {0}")]
    NotAnObject(String),
    #[error("{field} {value}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("{field} is missing: {why}")]
    Missing { field: &'static str, why: String },
}

impl ConfigError {
    /// The field the error is about, as flannel spells it (`None` for syntax errors).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::Missing { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Every problem of a refused config: the Enable flags', the IPv4 network's, the IPv6
/// network's, then the backend's; never empty once returned. Shown one problem per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    /// The problems, each naming its field and value.
    pub fn problems(&self) -> &[ConfigError] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// The value of a check that passed; a failed one is noted and gives `None`, so that
    /// checks depending on it are skipped.
    pub(crate) fn check<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }

    /// [`check`](Self::check) for a part that reports several problems itself.
    pub(crate) fn absorb<T>(&mut self, r: Result<T, ConfigErrors>) -> Option<T> {
        r.map_err(|e| self.0.extend(e.0)).ok()
    }

    /// `value` when nothing was noted; the problems otherwise.
    pub(crate) fn or<T>(self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(v) if self.is_empty() => Ok(v),
            _ => {
                debug_assert!(
                    !self.is_empty(),
                    "a part of the config failed without a problem"
                );
                Err(self)
            }
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(crate) fn invalid(
    field: &'static str,
    value: impl fmt::Display,
    why: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        why: why.into(),
    }
}

/// How a JSON value is shown in an error: strings bare, everything else as JSON.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON object with its keys in document order and duplicates kept, so that lookups can
/// follow Go's rule (case-insensitive, the last match wins).
pub(crate) struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry::<String, Value>()? {
                    v.push(entry);
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Case-insensitive lookup in an object; `null` counts as absent, like Go leaves a
/// non-pointer field alone when it meets `null`.
pub(crate) trait Lookup {
    fn field(&self, name: &str) -> Option<&Value>;
}

impl Lookup for OrderedObject {
    fn field(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
            .map(|(_, v)| v)
    }
}

impl Lookup for serde_json::Map<String, Value> {
    fn field(&self, name: &str) -> Option<&Value> {
        // Exact spelling first, as Go prefers it when several keys differ only in case.
        match self.get(name) {
            Some(v) if !v.is_null() => Some(v),
            _ => self
                .iter()
                .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
                .map(|(_, v)| v),
        }
    }
}

pub(crate) fn get_bool(
    obj: &impl Lookup,
    field: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match obj.field(field) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(field, show(v), "must be true or false")),
    }
}

pub(crate) fn get_uint(obj: &impl Lookup, field: &'static str) -> Result<Option<u64>, ConfigError> {
    match obj.field(field) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            invalid(
                field,
                show(v),
                "must be a whole number that is not negative",
            )
        }),
    }
}

pub(crate) fn get_str<'a>(
    obj: &'a impl Lookup,
    field: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.field(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(field, show(v), "must be a string")),
    }
}

/// What a secret setting's value is shown as.
pub const HIDDEN: &str = "(hidden)";

/// A problem with a secret setting, its value left out.
pub(crate) fn hide_value(e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { field, why, .. } => ConfigError::Invalid {
            field,
            value: HIDDEN.into(),
            why,
        },
        other => other,
    }
}

/// Backend fields are reported with their path so the operator finds them.
pub(crate) fn rename(e: ConfigError, field: &'static str) -> ConfigError {
    match e {
        ConfigError::Invalid { value, why, .. } => ConfigError::Invalid { field, value, why },
        other => other,
    }
}
