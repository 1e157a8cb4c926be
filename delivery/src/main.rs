//! `chatpipe-delivery`: sends the outbox of OUTBOUND messages through their
//! channels. See the library crate `chatpipe_delivery`; `--help` lists
//! every setting.

use anyhow::Context;
use chatpipe_delivery::DeliveryArgs;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = DeliveryArgs::parse();
    chatpipe_core::telemetry::init_tracing(&args.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(chatpipe_delivery::run(args))
}
