//! The one reader of a text record, for every path that reads texts from callers or files
//! (documents over HTTP, the indexing job, `mrl embed`'s stdin, the trainer's corpora): a JSON
//! string, or an object with a string `text`, an optional string `title` (BEIR's convention,
//! the one its published numbers use: the text embedded is `title + " " + text`, trimmed)
//! and an optional id, `id` else BEIR's `_id` (the caller decides what an id may be).

use serde_json::Value;

/// One record's parts, borrowed from its JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRecord<'a> {
    /// `id`, else `_id`, as given (`None` when absent or null).
    pub id: Option<&'a Value>,
    /// The title, `""` when there is none.
    pub title: &'a str,
    /// The text to embed: `title + " " + text`, trimmed.
    pub text: String,
    /// The object the record came from (`None` for a bare string).
    pub object: Option<&'a serde_json::Map<String, Value>>,
}

/// Why a value is no text record; `field` is `record`, `text` or `title`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TextError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: &str) -> TextError {
    TextError {
        field,
        message: message.to_string(),
    }
}

/// Reads a record: a JSON string (when `strings` allows them), or an object as above.
///
/// Errors: `record` for another JSON type, `text` for a missing or non-string text, `title`
/// for a non-string title. An empty text is the caller's to judge.
pub fn read(value: &Value, strings: bool) -> Result<TextRecord<'_>, TextError> {
    let o = match value {
        Value::String(s) if strings => {
            return Ok(TextRecord {
                id: None,
                title: "",
                text: s.trim().to_string(),
                object: None,
            })
        }
        Value::Object(o) => o,
        _ if strings => return Err(refuse("record", "expected a JSON string or object")),
        _ => return Err(refuse("record", "a document must be a JSON object")),
    };
    let body = match o.get("text") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(refuse("text", "text must be a string")),
        None => return Err(refuse("text", "a document needs a string field \"text\"")),
    };
    let title = match o.get("title") {
        None | Some(Value::Null) => "",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(refuse("title", "title must be a string")),
    };
    let id = o
        .get("id")
        .filter(|v| !v.is_null())
        .or_else(|| o.get("_id").filter(|v| !v.is_null()));
    Ok(TextRecord {
        id,
        title,
        text: format!("{title} {body}").trim().to_string(),
        object: Some(o),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn beir_lines_join_the_title_and_id_comes_before_underscore_id() {
        let v = json!({"_id": "b", "id": "a", "title": "T", "text": " body "});
        let r = read(&v, false).unwrap();
        assert_eq!(
            (r.id, r.title, r.text.as_str()),
            (Some(&json!("a")), "T", "T  body")
        );
        let v = json!({"_id": 7, "text": "x"});
        assert_eq!(read(&v, false).unwrap().id, Some(&json!(7)));
    }

    #[test]
    fn strings_only_where_allowed_and_bad_fields_are_named() {
        assert_eq!(read(&json!("  hi "), true).unwrap().text, "hi");
        assert_eq!(read(&json!("hi"), false).unwrap_err().field, "record");
        assert_eq!(read(&json!(3), true).unwrap_err().field, "record");
        assert_eq!(read(&json!({"txt": "x"}), true).unwrap_err().field, "text");
        assert_eq!(read(&json!({"text": 1}), true).unwrap_err().field, "text");
        assert_eq!(
            read(&json!({"text": "x", "title": 1}), true)
                .unwrap_err()
                .field,
            "title"
        );
    }
}
