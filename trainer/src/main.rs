//! `pneumoscope`: the native command line of Pneumoscope — dataset building, training,
//! evaluation, reports, prediction, Grad-CAM, export and benchmarks.

mod adam;
mod augment;
mod breakdown;
mod calibrate;
mod checkpoint;
mod cli;
mod commands;
mod comparison;
mod cv;
mod data;
mod device;
mod ensemble;
mod evaluate;
mod export;
mod fetch;
mod forward;
mod fsutil;
mod lungs;
mod metrics;
mod npy;
mod ood;
mod parallel;
mod population;
mod progress;
mod report;
mod study;
mod throughput;
mod train;
mod tuning;
mod weights;

use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`pneumoscope archs | head`) instead of panicking on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = commands::Cli::parse().run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
