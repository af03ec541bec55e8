use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tether::lambda::init_tracing();
    let (tether, queue) = tether::lambda::event_function_from_env().await?;
    run(service_fn(|event: LambdaEvent<Value>| tether_interruption::handler(&tether, &queue, event))).await
}
