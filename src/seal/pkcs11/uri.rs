//! RFC 7512 PKCS#11 URIs, as p11-kit, OpenSSL and GnuTLS users write them:
//! `pkcs11:token=sealkeeper-a;object=sealkeeper-root;type=secret-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sealkeeper/hsm-a.pin`.
//!
//! Every attribute this daemon can act on is taken; every other one is an error naming it, never
//! ignored (an ignored `manufacturer=` would select a token the operator did not mean). A PIN
//! inside the URI (`pin-value`) is refused: the URI sits in the config file.

use std::path::PathBuf;

/// What a URI names. Values are percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub serial: Option<String>,
    pub slot_id: Option<u64>,
    pub object: Option<String>,
    /// CKA_ID, raw bytes.
    pub id: Option<Vec<u8>>,
    /// `secret-key` or `private-key`.
    pub object_type: Option<String>,
    pub module_path: Option<PathBuf>,
    /// `pin-source=file:/path` (or an absolute path): the PIN file.
    pub pin_file: Option<PathBuf>,
}

impl Pkcs11Uri {
    pub fn parse(text: &str) -> Result<Pkcs11Uri, String> {
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| "a PKCS#11 URI starts with \"pkcs11:\"".to_string())?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        let mut seen = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| format!("path attribute {attr:?} has no '='"))?;
            if seen.contains(&name) {
                return Err(format!("attribute {name:?} is given twice"));
            }
            seen.push(name);
            let value = || decode_text(name, raw);
            match name {
                "token" => uri.token = Some(value()?),
                "serial" => uri.serial = Some(value()?),
                "slot-id" => {
                    uri.slot_id = Some(
                        value()?
                            .parse()
                            .map_err(|_| format!("slot-id {raw:?} is not a slot number"))?,
                    )
                }
                "object" => uri.object = Some(value()?),
                "id" => {
                    let bytes = decode(name, raw)?;
                    if bytes.is_empty() {
                        return Err("id is empty".into());
                    }
                    uri.id = Some(bytes);
                }
                "type" => {
                    let t = value()?;
                    if t != "secret-key" && t != "private-key" {
                        return Err(format!(
                            "type={t:?}: the seal's key is a secret-key (CKM_AES_GCM) or a \
                             private-key (CKM_RSA_PKCS_OAEP)"
                        ));
                    }
                    uri.object_type = Some(t);
                }
                "manufacturer"
                | "model"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {
                    return Err(format!(
                        "attribute {name:?} is not supported: select the token with token=, \
                         serial= or slot-id="
                    ));
                }
                other => return Err(format!("unknown path attribute {other:?}")),
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| format!("query attribute {attr:?} has no '='"))?;
            if seen.contains(&name) {
                return Err(format!("attribute {name:?} is given twice"));
            }
            seen.push(name);
            match name {
                "module-path" => {
                    let p = PathBuf::from(decode_text(name, raw)?);
                    if !p.is_absolute() {
                        return Err(format!(
                            "module-path {} must be an absolute path",
                            p.display()
                        ));
                    }
                    uri.module_path = Some(p);
                }
                "pin-source" => {
                    let v = decode_text(name, raw)?;
                    let path = v.strip_prefix("file:").unwrap_or(&v);
                    // file:/p and file:///p both name /p.
                    let path = path.strip_prefix("//").unwrap_or(path);
                    if !path.starts_with('/') {
                        return Err(format!(
                            "pin-source {v:?}: only a PIN file is supported (file:/absolute/path)"
                        ));
                    }
                    uri.pin_file = Some(PathBuf::from(path));
                }
                "pin-value" => {
                    return Err(
                        "pin-value puts the PIN into the configuration: use pin-source=file:/path \
                         (mode 0600)"
                            .into(),
                    );
                }
                "module-name" => {
                    return Err("module-name is not supported: give module-path".into());
                }
                other => return Err(format!("unknown query attribute {other:?}")),
            }
        }
        Ok(uri)
    }
}

/// Percent-decodes `raw` (RFC 3986): every `%XX` is one byte.
fn decode(name: &str, raw: &str) -> Result<Vec<u8>, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{name}: a '%' not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn decode_text(name: &str, raw: &str) -> Result<String, String> {
    String::from_utf8(decode(name, raw)?).map_err(|_| format!("{name} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_p11_kit_users_write() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=sealkeeper%20a;object=root-key;type=secret-key;id=%01%a0\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sk/a.pin",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("sealkeeper a"));
        assert_eq!(u.object.as_deref(), Some("root-key"));
        assert_eq!(u.id, Some(vec![0x01, 0xa0]));
        assert_eq!(u.object_type.as_deref(), Some("secret-key"));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin_file, Some(PathBuf::from("/etc/sk/a.pin")));
        let u = Pkcs11Uri::parse("pkcs11:serial=0123abcd;slot-id=7?pin-source=file:///p").unwrap();
        assert_eq!(u.serial.as_deref(), Some("0123abcd"));
        assert_eq!(u.slot_id, Some(7));
        assert_eq!(u.pin_file, Some(PathBuf::from("/p")));
        assert_eq!(Pkcs11Uri::parse("pkcs11:").unwrap(), Pkcs11Uri::default());
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_it() {
        for (uri, want) in [
            ("token=a", "starts with \"pkcs11:\""),
            ("pkcs11:token", "has no '='"),
            ("pkcs11:token=a;token=b", "given twice"),
            (
                "pkcs11:manufacturer=SoftHSM",
                "\"manufacturer\" is not supported",
            ),
            ("pkcs11:colour=blue", "unknown path attribute \"colour\""),
            ("pkcs11:type=cert", "type=\"cert\""),
            ("pkcs11:id=%zz", "two hex digits"),
            ("pkcs11:slot-id=x", "not a slot number"),
            ("pkcs11:?pin-value=1234", "use pin-source"),
            ("pkcs11:?pin-source=|/bin/askpass", "only a PIN file"),
            ("pkcs11:?module-name=softhsm2", "give module-path"),
            ("pkcs11:?module-path=lib.so", "absolute path"),
            ("pkcs11:?colour=blue", "unknown query attribute"),
        ] {
            let e = Pkcs11Uri::parse(uri).unwrap_err();
            assert!(e.contains(want), "{uri}: {e}");
        }
    }
}
