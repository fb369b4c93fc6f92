//! The command line's defaults as values: an options struct that clap fills is also what
//! library code and tests build when no command line is at hand.

/// The command line's defaults of an options struct, as if its verb were called with `args`
/// only: one declaration of every default, for the verb and for callers in code.
pub fn defaults<T: clap::Args>(args: &[&str]) -> T {
    #[derive(clap::Parser)]
    struct Defaults<T: clap::Args> {
        #[command(flatten)]
        options: T,
    }
    <Defaults<T> as clap::Parser>::parse_from(
        std::iter::once("pneumoscope").chain(args.iter().copied()),
    )
    .options
}
