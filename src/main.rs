//! The `mrl` binary: everything it does lives in `cli/`.

mod cli;

fn main() -> anyhow::Result<()> {
    cli::run()
}
