//! Why a policy document was refused: the field's path in the document and what is wrong
//! with it, shared by the document reader and its label selectors.

/// Why a document was refused: the field (as a path into the document) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct PolicyError {
    pub field: String,
    pub why: String,
}

pub(super) fn refuse(field: impl Into<String>, why: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        why: why.into(),
    }
}
