use lambda_http::{run, service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tether::lambda::init_tracing();
    let api = tether_api::Api::from_env().await?;
    run(service_fn(|request: Request| async { Ok::<_, Error>(api.handle(request).await) })).await
}
