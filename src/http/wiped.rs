//! Request and response values that hold secrets (plaintexts, data keys, client tokens) on the
//! Transit path, wiped when the request ends instead of left in freed heap for a core dump to
//! find. What this cannot reach: the copies inside hyper's and rustls's connection buffers (the
//! request as received, the answer as sent), which are reused for the connection's next bytes.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use zeroize::Zeroize;

/// A string from a request body that is zeroized on drop.
#[derive(Default)]
pub struct WipedString(String);

impl std::ops::Deref for WipedString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WipedString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WipedString(..)")
    }
}

impl Drop for WipedString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl From<String> for WipedString {
    fn from(s: String) -> WipedString {
        WipedString(s)
    }
}

impl serde::Serialize for WipedString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A value whose secrets can be zeroized in place once it has been serialized into an answer.
/// Types whose secret parts wipe themselves on drop (a [`WipedString`]) need do nothing.
pub trait Wipe {
    fn wipe(&mut self) {}
}

impl Wipe for Value {
    fn wipe(&mut self) {
        wipe_value(self);
    }
}

impl<'de> Deserialize<'de> for WipedString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WipedString, D::Error> {
        String::deserialize(d).map(WipedString)
    }
}

/// Zeroizes every string (and key) of a JSON tree in place.
pub fn wipe_value(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe_value),
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                wipe_value(x);
            }
        }
        _ => {}
    }
}

/// Bytes that are zeroized when the last reference (hyper's, after writing) is dropped.
struct WipeOnDrop(Vec<u8>);

impl AsRef<[u8]> for WipeOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A JSON answer whose body is wiped once sent. (A buffer that grows while serializing leaves no
/// copy behind: the daemon's allocator wipes every block it frees.)
pub fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    let mut buf = Vec::with_capacity(1024);
    let written = serde_json::to_writer(&mut buf, v);
    if written.is_err() {
        buf.zeroize();
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be serialized",
        )
            .into_response();
    }
    let mut resp = Response::new(Body::from(Bytes::from_owner(WipeOnDrop(buf))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wiped_tree_keeps_no_string() {
        let mut v =
            serde_json::json!({ "data": { "plaintext": "c2VjcmV0", "list": ["a", {"k": "v"}] } });
        wipe_value(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("\"a\""),
            "{text}"
        );
        let s: WipedString = serde_json::from_str("\"abc\"").unwrap_or_default();
        assert_eq!(&*s, "abc");
    }
}
