//! `chatpipe-local`: runs a `ChatPipeline` manifest as processes on this
//! machine (see the crate documentation of `chatpipe_local`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    chatpipe_local::run(chatpipe_local::LocalArgs::parse()).await
}
