//! Errors of the adapter layer: one type for every AWS call, keeping AWS's error code and
//! saying whether a retry can help.

use std::fmt;

/// How the caller should treat an AWS error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, timeouts, 5xx, no response: retry with backoff.
    Transient,
    /// `InvalidNetworkInterface.InUse`: the ENI is still attached to the old instance.
    EniInUse,
    /// No capacity for this instance type or market: try the next candidate.
    NoCapacity,
    /// A DynamoDB condition failed: someone else wrote first; re-read and decide again.
    Conflict,
    /// The resource does not exist.
    NotFound,
    /// The deployment is wrong (table missing, permission denied): retried, so that events
    /// are kept (and alarms fire) while an operator fixes it, never acknowledged and lost.
    Misconfigured,
    /// Retrying the same request cannot succeed.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub struct AwsError {
    pub service: &'static str,
    pub operation: &'static str,
    /// AWS's error code, e.g. `InsufficientInstanceCapacity`; `None` when no response came.
    pub code: Option<String>,
    pub message: String,
    pub class: ErrorClass,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} failed: {}: {}",
            self.service,
            self.operation,
            self.code.as_deref().unwrap_or("no response"),
            self.message
        )
    }
}

/// EC2 error codes that mean "no capacity for this candidate, try the next one".
pub const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "Unsupported",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "InsufficientCapacity",
    // The targeted capacity reservation is used up (or matches no candidate): the next
    // candidate, then a later retry when an instance in it terminates.
    "ReservationCapacityExceeded",
];

/// Throttling and server-side faults: a later retry can succeed.
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestThrottled",
    "RequestThrottledException",
    "LimitExceededException",
    "TransactionConflictException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "Unavailable",
];

/// Account quotas AWS refuses with these codes: the quota's name, code and default, so the
/// error says which to raise (Service Quotas) instead of a bare code.
const QUOTAS: &[(&str, &str)] = &[
    (
        "AddressLimitExceeded",
        "the account's Elastic IP quota (Service Quotas: Amazon EC2 \"EC2-VPC Elastic IPs\", L-0263D0A3, 5 per Region by default) is reached: release unused Elastic IPs or request an increase",
    ),
    (
        "NetworkInterfaceLimitExceeded",
        "the account's network interface quota (Service Quotas: Amazon VPC \"Network interfaces per Region\", L-DF5E4CA3, 5,000 by default) is reached: delete unused ENIs or request an increase",
    ),
];

/// The function's own setup is wrong: its table is missing or it lacks a permission.
const MISCONFIGURED_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "AuthFailure",
    "InvalidClientTokenId",
];

impl AwsError {
    /// Classifies an error response by its code (HTTP status breaks ties for unknown codes).
    pub fn from_code(
        service: &'static str,
        operation: &'static str,
        code: Option<&str>,
        message: Option<&str>,
        status: Option<u16>,
    ) -> Self {
        let class = match code {
            None => ErrorClass::Transient,
            Some("InvalidNetworkInterface.InUse") => ErrorClass::EniInUse,
            Some("ConditionalCheckFailedException" | "TransactionCanceledException") => ErrorClass::Conflict,
            Some(c) if CAPACITY_CODES.contains(&c) => ErrorClass::NoCapacity,
            Some(c) if TRANSIENT_CODES.contains(&c) => ErrorClass::Transient,
            Some(c) if MISCONFIGURED_CODES.contains(&c) => ErrorClass::Misconfigured,
            // EC2's launch templates answer a missing version `….VersionNotFound` and a
            // missing name `….NotFoundException`.
            Some(c) if c.ends_with(".NotFound") || c.ends_with(".VersionNotFound") || c.ends_with(".NotFoundException") => ErrorClass::NotFound,
            Some(_) if status.is_some_and(|s| s >= 500) => ErrorClass::Transient,
            Some(_) => ErrorClass::Permanent,
        };
        let mut message = message.unwrap_or("").to_owned();
        if let Some((_, quota)) = QUOTAS.iter().find(|(c, _)| Some(*c) == code) {
            message = format!("{message} ({quota})");
        }
        AwsError { service, operation, code: code.map(str::to_owned), message, class }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class,
            ErrorClass::Transient | ErrorClass::EniInUse | ErrorClass::Conflict | ErrorClass::Misconfigured
        )
    }

    pub fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_codes_tether_acts_on() {
        let class = |code: &str, status| AwsError::from_code("EC2", "RunInstances", Some(code), None, Some(status)).class;
        assert_eq!(class("InvalidNetworkInterface.InUse", 400), ErrorClass::EniInUse);
        assert_eq!(class("InsufficientInstanceCapacity", 500), ErrorClass::NoCapacity);
        assert_eq!(class("RequestLimitExceeded", 503), ErrorClass::Transient);
        assert_eq!(class("ConditionalCheckFailedException", 400), ErrorClass::Conflict);
        assert_eq!(class("InvalidNetworkInterfaceID.NotFound", 400), ErrorClass::NotFound);
        assert_eq!(class("InvalidLaunchTemplateId.VersionNotFound", 400), ErrorClass::NotFound);
        assert_eq!(class("InvalidLaunchTemplateName.NotFoundException", 400), ErrorClass::NotFound);
        assert_eq!(class("InvalidAMIID.Malformed", 400), ErrorClass::Permanent);
        assert_eq!(class("VcpuLimitExceeded", 400), ErrorClass::NoCapacity);
        assert_eq!(class("ResourceNotFoundException", 400), ErrorClass::Misconfigured);
        assert_eq!(class("UnauthorizedOperation", 403), ErrorClass::Misconfigured);
        assert_eq!(class("SomethingNew", 503), ErrorClass::Transient);
        let quota = AwsError::from_code("EC2", "AllocateAddress", Some("AddressLimitExceeded"), Some("The maximum number of addresses has been reached."), Some(400));
        assert!(quota.to_string().contains("L-0263D0A3") && quota.to_string().contains("request an increase"), "{quota}");
        let no_response = AwsError::from_code("EC2", "RunInstances", None, Some("timeout"), None);
        assert!(no_response.is_retryable());
        assert!(no_response.to_string().contains("no response"));
    }
}
