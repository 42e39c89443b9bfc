//! Errors that name the offending field, and the strict parse that makes them.
//!
//! Every invalid request is answered with a [`FieldError`]: a JSON pointer to
//! the field (`/host/hostname`, `/metadata/bindings/0/name`) and what is wrong
//! with it. Both the serde step (unknown fields, wrong types, missing fields)
//! and the semantic checks (`validate`) produce them.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// An invalid field: where (a JSON pointer, `""` for the whole body) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer of the field.
    pub pointer: String,
    /// What is wrong, in plain words (without the field's name).
    pub message: String,
}

impl FieldError {
    /// The field at `pointer` is wrong because of `message`.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    /// The field's path in dotted form (`host.hostname`), empty for the body.
    pub fn field(&self) -> String {
        self.pointer.trim_start_matches('/').replace('/', ".")
    }
}

/// `host.hostname: must not contain a scheme` (just the message for the body).
impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field();
        if field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{field}: {}", self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Parses `bytes` as a JSON object into `T`, strictly: a syntax error, a
/// non-object, an unknown field, a wrong type or a missing field is a
/// [`FieldError`] whose pointer starts with `at` (`""` for a request body,
/// `/metadata` for an upload's metadata part).
pub fn from_slice_at<T: DeserializeOwned>(bytes: &[u8], at: &str) -> Result<T, FieldError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| FieldError::new(at, format!("{}is not valid JSON: {e}", the_body(at))))?;
    from_value_at(value, at)
}

/// Like [`from_slice_at`], from JSON already parsed.
pub fn from_value_at<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new(
            at,
            format!("{}must be a JSON object", the_body(at)),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut pointer = at.to_owned();
        for segment in e.path() {
            use serde_path_to_error::Segment;
            match segment {
                Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    pointer.push('/');
                    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                }
                Segment::Unknown => {}
            }
        }
        let message = e.into_inner().to_string();
        // serde names a missing field in the message; name it in the pointer.
        match message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            Some(name) => FieldError::new(format!("{pointer}/{name}"), "is required"),
            None => FieldError::new(pointer, message),
        }
    })
}

/// Parses a name of `T` (a unit variant such as `http` or `verify_ca`) given
/// outside a JSON body (a query parameter, a command-line flag); a wrong one
/// is a [`FieldError`] at `pointer` listing the names allowed.
pub fn from_name<T: DeserializeOwned>(name: &str, pointer: &str) -> Result<T, FieldError> {
    use serde::de::IntoDeserializer;
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        name.into_deserializer();
    T::deserialize(de).map_err(|e| FieldError::new(pointer, e.to_string()))
}

fn the_body(at: &str) -> &'static str {
    if at.is_empty() { "the body " } else { "" }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    fn err(json: &str) -> FieldError {
        from_slice_at::<Outer>(json.as_bytes(), "").unwrap_err()
    }

    #[test]
    fn errors_name_the_field_by_pointer() {
        let e = err(r#"{"name": "x", "bogus": 1}"#);
        assert_eq!(e.pointer, "/bogus");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = err(r#"{"name": "x", "inner": [{"port": 1}, {"port": "80"}]}"#);
        assert_eq!(e.pointer, "/inner/1/port");
        assert!(
            e.to_string().starts_with("inner.1.port: invalid type"),
            "{e}"
        );
        let e = err(r#"{"inner": []}"#);
        assert_eq!(
            (e.pointer.as_str(), e.message.as_str()),
            ("/name", "is required")
        );
        let e = err(r#"{"name": "x", "inner": [{}]}"#);
        assert_eq!(e.pointer, "/inner/0/port");
        let e = err("[1]");
        assert_eq!(e.to_string(), "the body must be a JSON object");
        let e = err("{not json");
        assert!(
            e.to_string().starts_with("the body is not valid JSON"),
            "{e}"
        );
        let e = from_slice_at::<Outer>(b"{\"name\": 1}", "/metadata").unwrap_err();
        assert_eq!(e.pointer, "/metadata/name");
        assert!(
            e.to_string().starts_with("metadata.name: invalid type"),
            "{e}"
        );
        let e = from_name::<warren_store::ServiceType>("ftp", "/type").unwrap_err();
        assert_eq!(
            e.to_string(),
            "type: unknown variant `ftp`, expected `http` or `tcp`"
        );
        let ok: warren_store::CertVerificationMode = from_name("verify_ca", "/m").unwrap();
        assert_eq!(ok, warren_store::CertVerificationMode::VerifyCa);
        let e = from_slice_at::<Outer>(b"7", "/metadata").unwrap_err();
        assert_eq!(e.to_string(), "metadata: must be a JSON object");
    }
}
