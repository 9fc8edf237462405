//! `capture`: write a network's frames into a pcap file, as tcpdump's `-w` does.
//!
//! SIGINT and SIGTERM ask the capture to stop: it finishes the batch in hand, flushes,
//! leaves the network and prints its summary, so Ctrl-C always leaves a valid file. A
//! second signal while it stops ends the process at once.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::network::counters::DropReason;
use crate::network::{Network, VlanMembership};
use crate::ports::capture::{Capture, CaptureOptions, CaptureSummary};
use crate::wire::pcap::MAX_SNAPLEN;

/// Output buffer: several batches of full-size frames between two flushes at most.
const BUFFER_BYTES: usize = 1 << 18;

/// Arguments of `capture`.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Network name.
    pub name: String,
    /// File to write ('-' for standard output).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub file: PathBuf,
    /// Stop after this many frames.
    #[arg(short = 'c', long = "count", value_name = "N")]
    pub count: Option<u64>,
    /// Bytes kept of each frame.
    #[arg(long, default_value_t = MAX_SNAPLEN)]
    pub snaplen: u32,
    /// Which 802.1Q VLANs to capture. By default a capture is a trunk of every VLAN with
    /// native VLAN 1: it sees every frame, each of VLANs 2-4094 with its VLAN's tag
    /// (tcpdump and tshark show them) and those of VLAN 1 untagged, so a network without
    /// VLANs is captured as it always was. `--trunk all` tags VLAN 1 as well; `--vlan 10`
    /// captures VLAN 10 only, untagged; `--trunk 10,20` those two, tagged.
    #[command(flatten)]
    pub vlans: super::policy::VlanArgs,
}

/// Runs `capture`.
pub fn run(dir: &Path, args: CaptureArgs) -> anyhow::Result<()> {
    // Registered before joining, so that once the capture shows in `status` a signal
    // already stops it cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // The first registration exits at once if the flag is already set: a second
        // Ctrl-C must not be ignored if stopping hangs.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .context("install signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("install signal handlers")?;
    }
    let network = Network::open(dir, &args.name)?;
    let to_stdout = args.file.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.file).with_context(|| format!("create {}", args.file.display()))?,
        )
    };
    let label = if to_stdout {
        "stdout".to_string()
    } else {
        args.file.display().to_string()
    };
    let options = CaptureOptions {
        snaplen: args.snaplen,
        limit: args.count,
        label: label.clone(),
        vlans: args
            .vlans
            .membership(VlanMembership::default())
            .map_err(anyhow::Error::msg)?,
    };
    let mut capture = Capture::start(
        &network,
        BufWriter::with_capacity(BUFFER_BYTES, out),
        options,
    )
    .with_context(|| format!("capture {}", args.name))?;
    let outcome = capture.run(&stop);
    let summary = capture.finish();
    outcome.with_context(|| format!("capture {} into {label}", args.name))?;
    let summary = summary.with_context(|| format!("capture {} into {label}", args.name))?;
    eprintln!("{}", summary_line(&args.name, &label, &summary));
    Ok(())
}

fn summary_line(name: &str, label: &str, summary: &CaptureSummary) -> String {
    let counters = &summary.counters;
    let mut line = format!(
        "guestnet: captured {} frame{} from {name} into {label}; {} dropped",
        summary.captured,
        if summary.captured == 1 { "" } else { "s" },
        counters.rx_dropped_total()
    );
    let reasons: Vec<String> = DropReason::ALL
        .iter()
        .filter(|&&reason| counters.rx_dropped(reason) > 0)
        .map(|&reason| format!("{}={}", reason.name(), counters.rx_dropped(reason)))
        .collect();
    if !reasons.is_empty() {
        line.push_str(&format!(" ({})", reasons.join(" ")));
    }
    line
}
