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
    /// The PKCS#11 function that failed (shown as "C_Login").
    pub function: Option<Function>,
    /// Its return value (shown as "CKR_PIN_INCORRECT").
    pub rv: Option<RvError>,
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
            rv: None,
            detail: detail.into(),
        }
    }

    pub fn from_cryptoki(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, f) => HsmError {
                kind: kind_of(&rv),
                function: Some(f),
                rv: Some(rv),
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

    /// The error of a failed C_Decrypt of stored data (an unwrap). The HSM refused the data (so
    /// the member is healthy and the data is bad) only when it said so: CKR_ENCRYPTED_DATA_INVALID
    /// or _LEN_RANGE, or CKR_GENERAL_ERROR, which SoftHSM returns for a failed GCM tag or OAEP
    /// check. Every other code (CKR_FUNCTION_FAILED, CKR_DEVICE_ERROR, ...) keeps its own kind:
    /// the member failed, not the data.
    pub fn from_decrypt(e: CkError) -> Self {
        let mut err = HsmError::from_cryptoki(e);
        if err.rv == Some(RvError::GeneralError) {
            err.kind = ErrorKind::Authentication;
        }
        err
    }
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.function, &self.rv) {
            (Some(func), Some(rv)) => {
                write!(f, "{} failed: {}", function_name(func), ckr_name(rv))?
            }
            (Some(func), None) => write!(f, "{} failed", function_name(func))?,
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

impl HsmError {
    /// The failed call and its return value ("C_Login failed: CKR_PIN_INCORRECT") without the
    /// daemon's advice, for one-shot commands that give their own.
    pub fn call(&self) -> String {
        match (&self.function, &self.rv) {
            (Some(func), Some(rv)) => format!("{} failed: {}", function_name(func), ckr_name(rv)),
            (Some(func), None) => format!("{} failed", function_name(func)),
            _ => self.detail.clone(),
        }
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

    #[test]
    fn a_failed_decrypt_is_bad_data_only_when_the_hsm_says_so() {
        for rv in [
            RvError::EncryptedDataInvalid,
            RvError::EncryptedDataLenRange,
            RvError::GeneralError,
        ] {
            let e = HsmError::from_decrypt(CkError::Pkcs11(rv, Function::Decrypt));
            assert_eq!(e.kind, ErrorKind::Authentication, "{e}");
        }
        let e = HsmError::from_decrypt(CkError::Pkcs11(RvError::FunctionFailed, Function::Decrypt));
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.rv, Some(RvError::FunctionFailed));
        assert_eq!(e.to_string(), "C_Decrypt failed: CKR_FUNCTION_FAILED");
        let e = HsmError::from_decrypt(CkError::Pkcs11(RvError::DeviceError, Function::Decrypt));
        assert_eq!(e.kind, ErrorKind::Device);
    }
}
