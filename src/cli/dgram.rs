//! `dgram` (being written).
use std::path::Path;

/// Arguments of `dgram`.
#[derive(Debug, clap::Args)]
pub struct DgramArgs {
    /// Network name.
    pub name: String,
}
/// Runs `dgram`.
pub fn run(_dir: &Path, _args: DgramArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
