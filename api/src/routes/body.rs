//! Reading JSON request bodies field by field, so that every mistake is a
//! `400` naming its field (and no value is echoed back: a misplaced
//! password must not appear in an error).

use axum::extract::rejection::JsonRejection;
use axum::Json;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The body as a JSON object, or a `400` with `"field": "body"`.
pub fn json_object(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Map<String, Value>, ApiError> {
    match body {
        Ok(Json(Value::Object(map))) => Ok(map),
        Ok(_) => Err(ApiError::bad("body", "the body must be a JSON object")),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::bad(
            "body",
            "the body must be JSON (Content-Type: application/json)",
        )),
        Err(_) => Err(ApiError::bad("body", "the body is not valid JSON")),
    }
}

/// Field `name`, which must be a string.
pub fn required_string(body: &Map<String, Value>, name: &'static str) -> Result<String, ApiError> {
    match body.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad(name, format!("{name} must be a string"))),
        None => Err(ApiError::bad(name, format!("{name} is required"))),
    }
}

/// Field `name` when present: a string (`Some(Some)`), `null` when
/// `nullable` (`Some(None)`), absent (`None`).
pub fn optional_string(
    body: &Map<String, Value>,
    name: &'static str,
    nullable: bool,
) -> Result<Option<Option<String>>, ApiError> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(Value::Null) if nullable => Ok(Some(None)),
        Some(_) => Err(ApiError::bad(name, format!("{name} must be a string"))),
    }
}

/// Field `name` when present, which must be a boolean.
pub fn optional_bool(
    body: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<bool>, ApiError> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(name, format!("{name} must be true or false"))),
    }
}

/// `400` naming the first field not in `known`.
pub fn no_other_fields(body: &Map<String, Value>, known: &[&'static str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ApiError::BadRequest {
            message: format!(
                "unknown field {:?}; expected one of {}",
                k.chars().take(64).collect::<String>(),
                known.join(", ")
            ),
            field: Some("body"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn fields_are_checked_one_by_one() {
        let b = map(
            json!({"username": "ana", "password": 12345678, "display_name": null, "disabled": "no"}),
        );
        assert_eq!(required_string(&b, "username").unwrap(), "ana");
        let e = required_string(&b, "password").unwrap_err();
        assert_eq!(e.body().field.as_deref(), Some("password"));
        assert!(!e.body().error.contains("12345678"));
        assert_eq!(
            required_string(&b, "role")
                .unwrap_err()
                .body()
                .field
                .as_deref(),
            Some("role")
        );
        assert_eq!(
            optional_string(&b, "display_name", true).unwrap(),
            Some(None)
        );
        assert!(optional_string(&b, "display_name", false).is_err());
        assert_eq!(optional_string(&b, "role", false).unwrap(), None);
        assert!(optional_bool(&b, "disabled").is_err());
        assert!(no_other_fields(&b, &["username", "password", "display_name", "disabled"]).is_ok());
        assert_eq!(
            no_other_fields(&b, &["username"])
                .unwrap_err()
                .body()
                .field
                .as_deref(),
            Some("body")
        );
        assert!(json_object(Ok(Json(json!([1])))).is_err());
    }
}
