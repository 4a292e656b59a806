//! Documents as callers send them — `{id?, text, payload?}` objects, or BEIR corpus lines
//! `{_id, title, text, metadata}`; `adapt` cuts their stored vectors.

use mrl_encoder::text;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::store::caller_id;

/// A parsed document, not yet embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub payload: Map<String, Value>,
}

/// Why a document was refused; `field` is relative to the document (`text`, `id`, …).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DocumentError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> DocumentError {
    DocumentError {
        field,
        message: message.into(),
    }
}

impl DocumentError {
    /// The error as one of a request's `documents`: `InvalidField` naming
    /// `documents[i].{field}` (`documents[i]` for the document itself).
    pub fn at(self, i: usize) -> Error {
        let f = match self.field {
            "document" => format!("documents[{i}]"),
            field => format!("documents[{i}].{field}"),
        };
        Error::field(&f, format!("{f}: {}", self.message))
    }
}

/// Reads a request's documents as callers send them (see [`Document::from_json`]).
///
/// Errors: `InvalidField` naming `documents[i]` or `documents[i].{field}` for the first
/// document that is refused.
pub(crate) fn read_documents(values: &[Value]) -> Result<Vec<Document>, Error> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Document::from_json(v).map_err(|e| e.at(i)))
        .collect()
}

/// Reads a request's document ids: each a non-empty string or a number ([`caller_id`]), at
/// least one.
///
/// Errors: `InvalidField` naming `ids`.
pub(crate) fn read_ids(values: &[Value]) -> Result<Vec<String>, Error> {
    let ids: Vec<String> = values
        .iter()
        .map(|v| caller_id(v).unwrap_or_default())
        .collect();
    check_ids(&ids)?;
    Ok(ids)
}

/// The rule for ids a caller deletes by: at least one, none empty.
///
/// Errors: `InvalidField` naming `ids`.
pub(crate) fn check_ids(ids: &[String]) -> Result<(), Error> {
    if ids.is_empty() || ids.iter().any(String::is_empty) {
        return Err(Error::field(
            "ids",
            "ids must be a non-empty array of non-empty strings or numbers",
        ));
    }
    Ok(())
}

/// The id of a document sent without one: the text's SHA-256, so re-sending the same text
/// replaces it instead of adding a copy.
pub fn default_id(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

impl Document {
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            payload: Map::new(),
        }
    }

    /// A document whose id is its text's hash.
    pub fn from_text(text: impl Into<String>) -> Self {
        let text = text.into();
        Self::new(default_id(&text), text)
    }

    pub fn payload(mut self, payload: Map<String, Value>) -> Self {
        self.payload = payload;
        self
    }

    /// The rules every document follows, however it arrived: an id and a text that are not
    /// empty, and no payload key starting with `_` (the stores' own keys).
    ///
    /// Errors: `DocumentError` naming `id`, `text` or `payload`.
    pub fn check(&self) -> Result<(), DocumentError> {
        if self.id.is_empty() {
            return Err(refuse("id", "id must be a non-empty string or a number"));
        }
        if self.text.trim().is_empty() {
            return Err(refuse("text", "text must not be empty"));
        }
        if self.payload.keys().any(|k| k.starts_with('_')) {
            return Err(refuse(
                "payload",
                "payload keys starting with '_' are reserved",
            ));
        }
        Ok(())
    }

    /// Parses one document object and checks it ([`check`](Self::check)). BEIR's convention
    /// (the one its published numbers use) is followed for corpus lines: the embedded text is
    /// `title + " " + text`, trimmed; the title and a non-empty `metadata` object are kept in
    /// the payload.
    pub fn from_json(value: &Value) -> Result<Self, DocumentError> {
        let record = text::read(value, false).map_err(|e| {
            let field = if e.field == "record" {
                "document"
            } else {
                e.field
            };
            refuse(field, e.message)
        })?;
        let (o, title, text) = match record.object {
            Some(o) => (o, record.title, record.text),
            None => return Err(refuse("document", "a document must be a JSON object")),
        };
        let id = match record.id {
            None => default_id(&text),
            // Any other type reads as no id, which `check` refuses as it refuses an empty one.
            Some(v) => caller_id(v).unwrap_or_default(),
        };
        let mut payload = match o.get("payload") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => return Err(refuse("payload", "payload must be an object")),
        };
        if !title.is_empty() && !payload.contains_key("title") {
            payload.insert("title".into(), Value::String(title.to_string()));
        }
        if let Some(Value::Object(m)) = o.get("metadata") {
            if !m.is_empty() && !payload.contains_key("metadata") {
                payload.insert("metadata".into(), Value::Object(m.clone()));
            }
        }
        let doc = Self { id, text, payload };
        doc.check()?;
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn beir_lines_join_title_and_keep_it_in_the_payload() {
        let d = Document::from_json(&json!({"_id": "7", "title": "T", "text": " body ",
                                            "metadata": {}}))
        .unwrap();
        assert_eq!(d.id, "7");
        assert_eq!(d.text, "T  body");
        assert_eq!(
            d.payload,
            json!({"title": "T"}).as_object().unwrap().clone()
        );
    }

    #[test]
    fn ids_default_to_the_text_hash_and_numbers_become_strings() {
        let a = Document::from_json(&json!({"text": "same"})).unwrap();
        let b = Document::from_json(&json!({"text": "same", "payload": {"k": 1}})).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.id, default_id("same"));
        assert_eq!(
            Document::from_json(&json!({"id": 42, "text": "x"}))
                .unwrap()
                .id,
            "42"
        );
    }

    #[test]
    fn malformed_documents_name_the_field() {
        let field = |v: Value| Document::from_json(&v).unwrap_err().field;
        assert_eq!(field(json!("text")), "document");
        assert_eq!(field(json!({"title": "only a title", "text": 3})), "text");
        assert_eq!(field(json!({"text": "  "})), "text");
        assert_eq!(field(json!({"id": [1], "text": "x"})), "id");
        assert_eq!(field(json!({"id": "", "text": "x"})), "id");
        assert_eq!(field(json!({"text": "x", "payload": 1})), "payload");
        assert_eq!(
            field(json!({"text": "x", "payload": {"_id": 1}})),
            "payload"
        );
        assert_eq!(field(json!({"text": "x", "title": 1})), "title");
    }
}
