//! `pneumoscope`: the native command line of Pneumoscope — dataset building, training,
//! evaluation, reports, prediction, Grad-CAM, export and benchmarks.

// The floors, top to bottom (a module imports only from floors below its own):
// the command line; what judges and compares models; what goes into a model file; training;
// the lung segmenter; data; published weights and benchmarks; the run machinery.
mod bench;
mod commands;
mod data;
mod inspect;
mod lungs;
mod machinery;
mod metrics;
mod model_file;
mod pretrained;
mod study;
mod train;

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
