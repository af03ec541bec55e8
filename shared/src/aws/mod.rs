//! Adapters from the ports to AWS: DynamoDB for nodes, EC2 for the network and instances.

pub mod dynamo;
pub mod emf;
pub mod ec2;
pub mod event_claims;
pub mod idempotency;
pub mod pace;
pub mod queue;
pub mod registry;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::{AwsError, ErrorClass};

/// Turns any SDK error into an `AwsError`, keeping AWS's code and message.
pub(crate) fn aws_error<E>(service: &'static str, operation: &'static str, err: SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::ServiceError(_) if err.code().is_some() => {
            AwsError::from_code(service, operation, err.code(), err.message(), status)
        }
        // An error answer without a code (unparseable): keep all the SDK can say about it.
        SdkError::ServiceError(_) => {
            AwsError::from_code(service, operation, None, Some(&DisplayErrorContext(&err).to_string()), status)
        }
        // A request the SDK could not even build is a bug or bad input, not a passing fault.
        SdkError::ConstructionFailure(_) => AwsError {
            service,
            operation,
            code: None,
            message: DisplayErrorContext(&err).to_string(),
            class: ErrorClass::Permanent,
        },
        _ => AwsError::from_code(service, operation, None, Some(&DisplayErrorContext(&err).to_string()), status),
    }
}
