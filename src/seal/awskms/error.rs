//! AWS KMS failures, told apart by what they need: a retry (unreachable, timed out, throttled) or
//! an operator (denied, key unavailable), with the provider's error code and what to check.

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

use crate::seal::FailureKind;
pub use crate::seal::cloud::KmsError;
use crate::seal::cloud::chain;

/// What an error code means and what to check.
pub fn classify_code(
    op: &'static str,
    code: &str,
    status: u16,
) -> (FailureKind, Option<String>, bool) {
    let perm = match op {
        "Encrypt" => "kms:Encrypt",
        "Decrypt" => "kms:Decrypt",
        "DescribeKey" => "kms:DescribeKey",
        "GenerateRandom" => "kms:GenerateRandom",
        _ => "the KMS permissions",
    };
    match code {
        "AccessDeniedException" | "AccessDenied" => (
            FailureKind::Denied,
            Some(format!(
                "the key policy and the IAM policy of the credentials must allow {perm} on this key"
            )),
            false,
        ),
        "UnrecognizedClientException" | "InvalidClientTokenId" | "InvalidSignatureException"
        | "IncompleteSignature" | "MissingAuthenticationToken" | "SignatureDoesNotMatch" => (
            FailureKind::Denied,
            Some("the credentials are not valid for this account (access key, secret key, role)".into()),
            false,
        ),
        "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => (
            FailureKind::Denied,
            Some("the session credentials have expired; check the role or token source, and the host's clock".into()),
            false,
        ),
        "DisabledException" => (
            FailureKind::KeyUnavailable,
            Some("the key is disabled: enable it (aws kms enable-key)".into()),
            false,
        ),
        "KMSInvalidStateException" => (
            FailureKind::KeyUnavailable,
            Some("the key is not Enabled (pending deletion, pending import, or unavailable): aws kms describe-key".into()),
            false,
        ),
        "NotFoundException" => (
            FailureKind::KeyUnavailable,
            Some("no such key or alias in this region and account: check kms_key_id and region".into()),
            false,
        ),
        "KeyUnavailableException" | "CustomKeyStoreInvalidStateException" => (
            FailureKind::KeyUnavailable,
            Some("the key's custom key store is not available".into()),
            false,
        ),
        "InvalidCiphertextException" | "IncorrectKeyException" => (
            FailureKind::Authentication,
            Some("the stored blob was not encrypted by this key with this context: it was modified, or belongs to another key".into()),
            false,
        ),
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "LimitExceededException"
        | "RequestLimitExceeded" => (FailureKind::Unreachable, None, true),
        "KMSInternalException" | "DependencyTimeoutException" | "ServiceUnavailable"
        | "ServiceUnavailableException" | "InternalFailure" => (FailureKind::Unreachable, None, false),
        "InvalidKeyUsageException" | "ValidationException" | "InvalidArnException"
        | "UnsupportedOperationException" => (
            FailureKind::InvalidConfig,
            Some("kms_key_id must name a symmetric ENCRYPT_DECRYPT key".into()),
            false,
        ),
        _ if status == 429 => (FailureKind::Unreachable, None, true),
        _ if status >= 500 => (FailureKind::Unreachable, None, false),
        _ if status == 401 || status == 403 => (
            FailureKind::Denied,
            Some(format!("the credentials must be allowed {perm} on this key")),
            false,
        ),
        _ => (FailureKind::Other, None, false),
    }
}

/// Classifies an SDK error.
pub fn classify<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(c) = credentials_error(&e) {
        return KmsError::new(
            FailureKind::Denied,
            op,
            Some("NoCredentials".into()),
            c,
            Some(
                "no usable AWS credentials: give access_key/secret_key, a role, a shared credentials file, \
                 or run with an instance or task role"
                    .into(),
            ),
        );
    }
    match &e {
        SdkError::TimeoutError(_) => KmsError::new(
            FailureKind::Timeout,
            op,
            None,
            "the call timed out",
            Some("check the network path to the KMS endpoint".into()),
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => KmsError::new(
            FailureKind::Timeout,
            op,
            None,
            "connecting timed out",
            Some("check the network path to the KMS endpoint".into()),
        ),
        SdkError::DispatchFailure(_) => KmsError::new(
            FailureKind::Unreachable,
            op,
            None,
            format!("cannot reach the endpoint: {}", chain(&e)),
            Some("check the endpoint, DNS, proxy and firewall".into()),
        ),
        SdkError::ResponseError(_) => KmsError::new(
            FailureKind::Unreachable,
            op,
            None,
            format!("the answer could not be read: {}", chain(&e)),
            None,
        ),
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("").to_string();
            let status = s.raw().status().as_u16();
            let (kind, hint, throttled) = classify_code(op, &code, status);
            let mut k = KmsError::new(
                kind,
                op,
                Some(if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    code
                }),
                s.err().message().unwrap_or("(no message)").to_string(),
                hint,
            );
            k.throttled = throttled;
            k
        }
        _ => KmsError::other(op, chain(&e)),
    }
}

fn credentials_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) =
            err.downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
        {
            return Some(chain(c));
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_need_an_operator_are_not_retried_like_outages() {
        for (code, kind) in [
            ("AccessDeniedException", FailureKind::Denied),
            ("UnrecognizedClientException", FailureKind::Denied),
            ("ExpiredTokenException", FailureKind::Denied),
            ("DisabledException", FailureKind::KeyUnavailable),
            ("KMSInvalidStateException", FailureKind::KeyUnavailable),
            ("NotFoundException", FailureKind::KeyUnavailable),
            ("IncorrectKeyException", FailureKind::Authentication),
            ("InvalidCiphertextException", FailureKind::Authentication),
            ("InvalidKeyUsageException", FailureKind::InvalidConfig),
        ] {
            assert_eq!(classify_code("Decrypt", code, 400).0, kind, "{code}");
        }
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        let (k, _, throttled) = classify_code("Decrypt", "ThrottlingException", 400);
        assert_eq!((k, throttled), (FailureKind::Unreachable, true));
        let (k, _, throttled) = classify_code("Decrypt", "", 429);
        assert_eq!((k, throttled), (FailureKind::Unreachable, true));
        assert_eq!(
            classify_code("Decrypt", "KMSInternalException", 500).0,
            FailureKind::Unreachable
        );
        assert_eq!(
            classify_code("Decrypt", "Weird", 503).0,
            FailureKind::Unreachable
        );
    }

    #[test]
    fn a_denial_names_the_permission_to_check() {
        let (_, hint, _) = classify_code("Decrypt", "AccessDeniedException", 400);
        assert!(hint.unwrap().contains("kms:Decrypt"));
        let (_, hint, _) = classify_code("DescribeKey", "AccessDeniedException", 400);
        assert!(hint.unwrap().contains("kms:DescribeKey"));
    }

    #[test]
    fn the_message_has_code_and_hint_but_no_request_data() {
        let e = KmsError::new(
            FailureKind::Denied,
            "Decrypt",
            Some("AccessDeniedException".into()),
            "User is not authorized",
            Some("allow kms:Decrypt".into()),
        );
        assert_eq!(
            e.to_string(),
            "Decrypt: AccessDeniedException: User is not authorized (check: allow kms:Decrypt)"
        );
    }
}
