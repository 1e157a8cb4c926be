//! `chatpipe-loadgen`: a load generator for the webhook ingest.
//!
//! It first creates `--conversations` conversations (NEW_CONVERSATION, each
//! must get `201`), then posts NEW_MESSAGE events to them from
//! `--concurrency` workers, each with its own keep-alive HTTP/1.1 connection
//! and one request in flight, for `--duration` (after `--warmup`) or until
//! `--total` messages. It prints accepted requests/s, latency percentiles
//! (hdrhistogram, microsecond resolution) and errors by status. See
//! [`chatpipe_bench::load`] for the load shapes (`--rate`, `--burst`,
//! `--burst-gap`, `--close`).

use anyhow::Context;
use chatpipe_bench::load::{self, LoadArgs};
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chatpipe-loadgen",
    version,
    about = "Posts NEW_MESSAGE webhooks at full speed (or a set rate) and prints throughput and latency"
)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Tokio worker threads of the load generator.
    #[arg(long, env = "CHATPIPE_LOADGEN_THREADS", default_value_t = 1)]
    threads: usize,
    /// Also print the summary as one JSON line.
    #[arg(long, env = "CHATPIPE_LOADGEN_JSON", default_value_t = false)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the runtime")?;
    let report = runtime.block_on(load::run(args.load.clone()))?;
    println!("{}", report.summary(&args.load));
    if args.json {
        println!("{}", report.json(&args.load));
    }
    Ok(())
}
