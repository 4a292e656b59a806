//! Callers' filters, written in Qdrant's REST JSON (the embedded store's form), turned into the
//! gRPC `Filter` a Qdrant server takes.

use qdrant_client::qdrant::{
    condition::ConditionOneOf, r#match::MatchValue, Condition, Filter, PointId, Range,
};
use serde_json::Value;

use crate::store::{Result, StoreError};

/// Qdrant's REST filter JSON (what the embedded store takes) in its gRPC form: `must`,
/// `should`, `must_not` (nested freely), and conditions `match` (`value`, `any`, `except`,
/// `text`), `range`, `is_empty`, `is_null`, `has_id` (point ids: UUID strings or integers; the
/// store's searches pass callers' filters through `point_filter` first).
pub fn filter_from_json(v: &Value) -> Result<Filter> {
    let bad = |m: String| StoreError::InvalidFilter(m);
    let o = v
        .as_object()
        .ok_or_else(|| bad("a filter must be an object".into()))?;
    let mut filter = Filter::default();
    for (key, value) in o {
        let conditions = match value {
            Value::Array(items) => items
                .iter()
                .map(condition_from_json)
                .collect::<Result<_>>()?,
            Value::Object(_) => vec![condition_from_json(value)?],
            _ => return Err(bad(format!("{key} must be a condition or a list of them"))),
        };
        match key.as_str() {
            "must" => filter.must = conditions,
            "should" => filter.should = conditions,
            "must_not" => filter.must_not = conditions,
            other => return Err(bad(format!("unsupported filter clause {other:?}"))),
        }
    }
    Ok(filter)
}

fn condition_from_json(v: &Value) -> Result<Condition> {
    let bad = |m: String| StoreError::InvalidFilter(m);
    let o = v
        .as_object()
        .ok_or_else(|| bad("a condition must be an object".into()))?;
    if ["must", "should", "must_not"]
        .iter()
        .any(|k| o.contains_key(*k))
    {
        return Ok(Condition {
            condition_one_of: Some(ConditionOneOf::Filter(filter_from_json(v)?)),
        });
    }
    let field = |k: &str| -> Result<String> {
        o.get(k)
            .and_then(|x| x.get("key").or(Some(x)))
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| bad(format!("{k} needs a key")))
    };
    if o.contains_key("is_empty") {
        return Ok(Condition::is_empty(field("is_empty")?));
    }
    if o.contains_key("is_null") {
        return Ok(Condition::is_null(field("is_null")?));
    }
    if let Some(ids) = o.get("has_id") {
        let points = ids
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .map(|id| match id {
                        Value::String(s) => Some(PointId::from(s.clone())),
                        Value::Number(n) => n.as_u64().map(PointId::from),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("has_id must list point ids: {ids}")))?;
        return Ok(Condition::has_id(points));
    }
    let key = o
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("a field condition needs \"key\": {v}")))?;
    if let Some(m) = o.get("match") {
        let strings = |x: &Value| -> Option<Vec<String>> {
            x.as_array()?
                .iter()
                .map(|s| s.as_str().map(String::from))
                .collect()
        };
        let ints =
            |x: &Value| -> Option<Vec<i64>> { x.as_array()?.iter().map(Value::as_i64).collect() };
        let value = if let Some(x) = m.get("value") {
            match x {
                Value::String(s) => MatchValue::Keyword(s.clone()),
                Value::Bool(b) => MatchValue::Boolean(*b),
                Value::Number(n) if n.is_i64() => MatchValue::Integer(n.as_i64().unwrap_or(0)),
                _ => {
                    return Err(bad(format!(
                        "match.value must be a string, integer or bool: {x}"
                    )))
                }
            }
        } else if let Some(x) = m.get("any") {
            match (strings(x), ints(x)) {
                (Some(s), _) => MatchValue::Keywords(s.into()),
                (_, Some(i)) => MatchValue::Integers(i.into()),
                _ => return Err(bad("match.any must list strings or integers".into())),
            }
        } else if let Some(x) = m.get("except") {
            match (strings(x), ints(x)) {
                (Some(s), _) => MatchValue::ExceptKeywords(s.into()),
                (_, Some(i)) => MatchValue::ExceptIntegers(i.into()),
                _ => return Err(bad("match.except must list strings or integers".into())),
            }
        } else if let Some(Value::String(t)) = m.get("text") {
            MatchValue::Text(t.clone())
        } else {
            return Err(bad(format!("unsupported match {m}")));
        };
        return Ok(Condition::matches(key, value));
    }
    if let Some(r) = o.get("range") {
        // Bounds are numbers or absent (`point_filter` has refused other keys).
        let num = |k: &str| match r.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(format!("range.{k} must be a number, got {v}"))),
        };
        return Ok(Condition::range(
            key,
            Range {
                lt: num("lt")?,
                gt: num("gt")?,
                gte: num("gte")?,
                lte: num("lte")?,
            },
        ));
    }
    Err(bad(format!("unsupported condition {v}")))
}
