//! `pktgen` and `sink` (being written).
use std::path::Path;

/// Arguments of `pktgen`.
#[derive(Debug, clap::Args)]
pub struct PktgenArgs {
    /// Network name.
    pub name: String,
}
/// Arguments of `sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Network name.
    pub name: String,
}
/// Runs `pktgen`.
pub fn pktgen(_dir: &Path, _args: PktgenArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
/// Runs `sink`.
pub fn sink(_dir: &Path, _args: SinkArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
