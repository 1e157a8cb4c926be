//! `chatpipe-ingest`: the webhook ingest service binary. See the library
//! crate `chatpipe_ingest` for what it does; `--help` lists every setting.

use anyhow::Context;
use chatpipe_ingest::IngestArgs;
use clap::Parser;

/// mimalloc: the request path allocates many small short-lived objects
/// (JSON values, HTTP buffers); it costs measurably less CPU than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = IngestArgs::parse();
    chatpipe_core::telemetry::init_tracing(&args.log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        builder.worker_threads(args.worker_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(chatpipe_ingest::run(args))
}
