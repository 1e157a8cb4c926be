//! `chatpipe-api`: the query API and conversation viewer (see the library
//! docs of `chatpipe_api`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = chatpipe_api::config::Config::parse();
    chatpipe_core::telemetry::init_tracing(&config.log);
    chatpipe_api::run(config).await
}
