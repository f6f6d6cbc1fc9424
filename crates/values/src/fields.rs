//! Typed request fields from JSON, with errors that name the field at fault (`texts[1]`,
//! `values.power.target`), so a 422 can say which part of a body to fix.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A field-level problem with a request body: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
}

impl FieldError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The same problem inside a field of an enclosing body (`profile` + `values.x` ->
    /// `profile.values.x`), with the message naming the new path.
    pub fn within(self, parent: &str) -> Self {
        let param = format!("{parent}.{}", self.param);
        let message = self
            .message
            .replacen(&format!("'{}'", self.param), &format!("'{param}'"), 1);
        Self { param, message }
    }
}

/// Deserialize `T` from `value`. On failure the error's `param` is the path of the field at
/// fault: where an unknown field or a bad value sits, or the missing field's own path; `None`
/// when the value itself (not one of its fields) has the wrong shape.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        shape_error(&path, &message)
    })
}

/// A shape error at `path` (`.` for the value itself) as a [`FieldError`]; `param` is empty
/// when no field is at fault.
pub fn shape_error(path: &str, message: &str) -> FieldError {
    // The path of an unknown field ends with it; a missing field is named (in backquotes) in
    // the message, at the path of the object that lacks it.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let param = match (path, missing) {
        (".", Some(field)) => field.to_owned(),
        (p, Some(field)) => format!("{p}.{field}"),
        (".", None) => String::new(),
        (p, None) => p.to_owned(),
    };
    let message = if param.is_empty() {
        format!("The request body has the wrong shape: {message}")
    } else {
        format!("'{param}': {message}")
    };
    FieldError { param, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only the shape is checked")]
    struct Shape {
        name: String,
        items: Option<Vec<String>>,
        inner: Option<Inner>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only the shape is checked")]
    struct Inner {
        n: u32,
    }

    fn param_of(v: Value) -> String {
        from_value::<Shape>(v).unwrap_err().param
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(param_of(json!({})), "name");
        assert_eq!(param_of(json!({"name": 1})), "name");
        assert_eq!(param_of(json!({"name": "a", "nmae": 1})), "nmae");
        assert_eq!(
            param_of(json!({"name": "a", "items": ["x", 2]})),
            "items[1]"
        );
        assert_eq!(param_of(json!({"name": "a", "inner": {"m": 1}})), "inner.m");
        assert_eq!(
            param_of(json!({"name": "a", "inner": {"n": "x"}})),
            "inner.n"
        );
        assert_eq!(param_of(json!("a")), "");
    }

    #[test]
    fn within_prefixes_the_path_and_the_message() {
        let e = FieldError::new("values.x", "'values.x': unknown").within("profile");
        assert_eq!(e.param, "profile.values.x");
        assert_eq!(e.message, "'profile.values.x': unknown");
    }
}
