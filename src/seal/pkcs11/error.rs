//! PKCS#11 failures, kept with the function that failed and its CKR code, and sorted into the kinds
//! that decide what the seal does next. The translation happens in one place: [`HsmError::from_cryptoki`].

use std::fmt;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// What a failure means for the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The module could not be loaded.
    Library,
    /// No token matches the selector (absent, removed, not yet provisioned).
    TokenNotFound,
    /// The PIN was rejected, locked, expired or malformed: never retried automatically.
    Pin,
    /// A PIN rejected earlier is still configured: not tried again.
    PinBlocked,
    /// The PIN source could not be read.
    PinSource,
    /// The session is gone (HSM reboot, idle timeout): reopen and log in again.
    Session,
    /// The device or the module's state is gone: finalize and initialize the module again.
    Device,
    /// The seal key is not on the token, or is ambiguous.
    Key,
    /// The token cannot do the configured mechanism with this key.
    Mechanism,
    /// The HSM refused the ciphertext: tampered, or wrapped by another key.
    Authentication,
    /// The call did not return within the member's timeout.
    Timeout,
    /// An earlier call is still stuck inside the module.
    Hung,
    /// This host ran out of something (descriptors, memory): says nothing about the HSM, so the
    /// member's health is left as it was.
    LocalResource,
    Other,
}

#[derive(Debug, Clone)]
pub struct HsmError {
    pub kind: ErrorKind,
    /// The PKCS#11 function, e.g. "C_Login".
    pub function: Option<String>,
    /// The CKR code name, e.g. "CKR_PIN_INCORRECT".
    pub ckr: Option<String>,
    pub detail: String,
}

/// "PinIncorrect" -> "CKR_PIN_INCORRECT".
fn ckr_name(rv: &RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn function_name(f: &Function) -> String {
    format!("C_{f:?}")
}

fn kind_of(rv: &RvError) -> ErrorKind {
    use RvError::*;
    match rv {
        PinIncorrect | PinLocked | PinExpired | PinLenRange | PinInvalid => ErrorKind::Pin,
        SessionHandleInvalid | SessionClosed | UserNotLoggedIn | KeyHandleInvalid
        | ObjectHandleInvalid => ErrorKind::Session,
        DeviceRemoved
        | DeviceError
        | TokenNotPresent
        | TokenNotRecognized
        | CryptokiNotInitialized
        | SlotIdInvalid
        | DeviceMemory => ErrorKind::Device,
        EncryptedDataInvalid | EncryptedDataLenRange => ErrorKind::Authentication,
        HostMemory => ErrorKind::LocalResource,
        MechanismInvalid
        | MechanismParamInvalid
        | KeyTypeInconsistent
        | KeyFunctionNotPermitted
        | KeySizeRange => ErrorKind::Mechanism,
        _ => ErrorKind::Other,
    }
}

impl HsmError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        HsmError {
            kind,
            function: None,
            ckr: None,
            detail: detail.into(),
        }
    }

    pub fn from_cryptoki(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, f) => HsmError {
                kind: kind_of(&rv),
                function: Some(function_name(&f)),
                ckr: Some(ckr_name(&rv)),
                detail: String::new(),
            },
            CkError::LibraryLoading(le) => {
                HsmError::new(ErrorKind::Library, format!("cannot load module: {le}"))
            }
            other => HsmError::new(ErrorKind::Other, other.to_string()),
        }
    }

    /// Whether reopening the session (and, failing that, re-initializing the module) may help.
    /// A missing key counts: a token that was removed and came back (or was swapped for its
    /// replacement) shows its objects only to a fresh session of a re-initialized module.
    pub fn recoverable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Session | ErrorKind::Device | ErrorKind::TokenNotFound | ErrorKind::Key
        )
    }

    pub fn needs_reinit(&self) -> bool {
        matches!(self.kind, ErrorKind::Device | ErrorKind::TokenNotFound)
    }
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.function, &self.ckr) {
            (Some(func), Some(ckr)) => write!(f, "{func} failed: {ckr}")?,
            (Some(func), None) => write!(f, "{func} failed")?,
            _ => {}
        }
        if !self.detail.is_empty() {
            if self.function.is_some() {
                write!(f, " ({})", self.detail)?;
            } else {
                write!(f, "{}", self.detail)?;
            }
        } else if self.kind == ErrorKind::Pin {
            write!(
                f,
                " (the PIN was rejected; this member is not logged into again until its PIN source changes \
                 or `sealkeeper operator unseal` is run)"
            )?;
        } else if self.kind == ErrorKind::Authentication {
            write!(
                f,
                " (the stored blob was modified, or was wrapped by a different key)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for HsmError {}

/// An [`HsmError`] with the member it happened on.
#[derive(Debug, Clone)]
pub struct MemberError {
    pub member: String,
    pub error: HsmError,
}

impl fmt::Display for MemberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.member, self.error)
    }
}

impl std::error::Error for MemberError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_and_kinds() {
        let e = HsmError::from_cryptoki(CkError::Pkcs11(RvError::PinIncorrect, Function::Login));
        assert_eq!(e.kind, ErrorKind::Pin);
        assert!(
            e.to_string()
                .starts_with("C_Login failed: CKR_PIN_INCORRECT"),
            "{e}"
        );
        let e = HsmError::from_cryptoki(CkError::Pkcs11(
            RvError::SessionHandleInvalid,
            Function::Decrypt,
        ));
        assert_eq!(e.kind, ErrorKind::Session);
        assert_eq!(
            e.to_string(),
            "C_Decrypt failed: CKR_SESSION_HANDLE_INVALID"
        );
        let e = HsmError::from_cryptoki(CkError::Pkcs11(
            RvError::CryptokiNotInitialized,
            Function::OpenSession,
        ));
        assert!(e.recoverable() && e.needs_reinit());
        let e = HsmError::from_cryptoki(CkError::Pkcs11(
            RvError::EncryptedDataInvalid,
            Function::Decrypt,
        ));
        assert_eq!(e.kind, ErrorKind::Authentication);
    }
}
