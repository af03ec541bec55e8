//! The event queues (SQS): a waiting event's message is put back with a delay.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;

use super::aws_error;
use crate::error::{AwsError, ErrorClass};
use crate::ports::EventQueue;

#[derive(Clone)]
pub struct SqsEventQueue {
    client: Client,
}

impl SqsEventQueue {
    pub fn new(client: Client) -> Self {
        SqsEventQueue { client }
    }
}

/// A queue's URL from its ARN (`arn:<partition>:sqs:<region>:<account>:<name>`), which is
/// what a record names: SendMessage routes on the URL's account and name, so no
/// GetQueueUrl call (nor its permission) is needed.
pub fn queue_url(queue_arn: &str) -> Option<String> {
    let mut parts = queue_arn.splitn(6, ':');
    let (arn, partition, service, region, account, name) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if arn != "arn" || service != "sqs" || region.is_empty() || account.is_empty() || name.is_empty() {
        return None;
    }
    let domain = match partition {
        "aws-cn" => "amazonaws.com.cn",
        _ => "amazonaws.com",
    };
    Some(format!("https://sqs.{region}.{domain}/{account}/{name}"))
}

/// SQS's `DelaySeconds` for `delay`: whole seconds, rounded up.
fn delay_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

#[async_trait]
impl EventQueue for SqsEventQueue {
    async fn requeue(&self, queue_arn: &str, body: &str, delay: Duration) -> Result<(), AwsError> {
        let Some(url) = queue_url(queue_arn) else {
            return Err(AwsError {
                service: "SQS",
                operation: "SendMessage",
                code: None,
                message: format!("`{queue_arn}` is not an SQS queue's ARN"),
                class: ErrorClass::Permanent,
            });
        };
        // Whole seconds, rounded up: the event must not come back before it is due.
        let delay_seconds = i32::try_from(delay_seconds(delay)).unwrap_or(i32::MAX).min(900);
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(delay_seconds)
            .send()
            .await
            .map_err(|e| aws_error("SQS", "SendMessage", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{delay_seconds, queue_url};
    use std::time::Duration;

    #[test]
    fn a_delay_is_rounded_up_to_whole_seconds() {
        assert_eq!(delay_seconds(Duration::from_millis(29_001)), 30);
        assert_eq!(delay_seconds(Duration::from_secs(30)), 30);
        assert_eq!(delay_seconds(Duration::ZERO), 0);
    }

    #[test]
    fn a_queue_url_comes_from_its_arn() {
        assert_eq!(queue_url("arn:aws:sqs:eu-west-1:123456789012:tether-StateChangeQueue-AB1").as_deref(), Some("https://sqs.eu-west-1.amazonaws.com/123456789012/tether-StateChangeQueue-AB1"));
        assert_eq!(queue_url("arn:aws-cn:sqs:cn-north-1:123456789012:q").as_deref(), Some("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q"));
        assert_eq!(queue_url("arn:aws:sns:eu-west-1:123456789012:topic"), None);
        assert_eq!(queue_url(""), None);
    }
}
