//! The second anchor of `bench`: DPDK's memif (shared-memory packet interface), two
//! `dpdk-testpmd` processes joined by one `net_memif` link, one sending (`txonly`) and one
//! receiving (`rxonly`), each busy-polling one core: the same cores as guestnet's sender
//! and receiver. memif moves frames point to point and switches nothing; it is the fastest
//! way DPDK knows to move frames between two processes, so it is the bar guestnet's
//! process → process figure is held to.
//!
//! Both run at their prompt, as `bench --vhost-user` runs them (see [`super::testpmd`]).
//! The rate is the receiver's `RX-packets` read while both forward, once at the start of
//! the window and once at its end, over the time between the two readings. The memif
//! socket lives in the run's private directory, which is removed on every exit path; the
//! instances are children of the run's [`Interrupt`], so Ctrl-C kills them too.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::process::{Interrupt, Placement, allowed_cpus};
use super::testpmd::{self, HugePages, Instance, Testpmd};
use crate::bench::Throughput;

/// What the anchor is, as printed.
pub(super) const MEMIF_NAME: &str =
    "DPDK memif, dpdk-testpmd txonly → rxonly, one busy-polling core each";
/// How long the two instances may take to connect.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the link is looked at while waiting for it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Time the two run before the window opens, so it measures the steady state.
const WARM_UP: Duration = Duration::from_millis(200);

/// The memif figures of a run.
pub(super) struct Measured {
    pub(super) throughput: Throughput,
    /// Frames the receiver counted in the window.
    pub(super) received: u64,
    /// The window's length.
    pub(super) window: Duration,
}

/// The CPUs of the receiving and the sending instance: those of guestnet's receiver and
/// sender. DPDK pins its threads in any case, so without a placement (`--no-pin`, or one
/// CPU) the first two CPUs this command may use are taken (the same one twice if alone).
fn cpus(placement: &Placement) -> (usize, usize) {
    if let (Some(receiver), Some(sender)) = (placement.receiver(), placement.sender(0)) {
        return (receiver, sender);
    }
    let allowed = allowed_cpus();
    let first = allowed.first().copied().unwrap_or(0);
    (first, allowed.get(1).copied().unwrap_or(first))
}

/// Whether memif can be measured here: `Err` says why not (DPDK missing).
pub(super) fn preflight() -> anyhow::Result<std::path::PathBuf> {
    testpmd::preflight("the memif anchor").map_err(|_| {
        anyhow::anyhow!(
            "the memif anchor needs DPDK's {} and `stdbuf`: on Debian 12 `apt-get install \
             --no-install-recommends dpdk-dev librte-net-memif23 librte-mempool-ring23`",
            testpmd::TESTPMD
        )
    })
}

/// Measures memif for `seconds` with `frame_size`-byte frames, the socket in `workspace`.
pub(super) fn measure(
    testpmd: &Path,
    workspace: &Path,
    frame_size: usize,
    seconds: f64,
    placement: &Placement,
    interrupt: &Interrupt,
) -> anyhow::Result<Measured> {
    let huge_pages = HugePages::reserve(2);
    let socket = workspace.join("memif.sock");
    let device = |role: &str| {
        format!(
            "net_memif0,role={role},id=0,socket={},socket-abstract=no",
            socket.display()
        )
    };
    let (receiving, sending) = cpus(placement);
    let common = |mode: &str| {
        vec![
            format!("--forward-mode={mode}"),
            "--port-topology=loop".to_string(),
        ]
    };
    // The server first: it makes the socket the client connects to.
    let mut receiver = Testpmd::start(
        testpmd,
        &Instance {
            name: "memif receiver",
            cpus: vec![receiving],
            devices: vec![device("server")],
            options: common("rxonly"),
        },
        huge_pages.memory(),
        &interrupt.children,
    )?;
    let mut sender = Testpmd::start(
        testpmd,
        &Instance {
            name: "memif sender",
            cpus: vec![sending],
            devices: vec![device("client")],
            options: common("txonly")
                .into_iter()
                .chain([format!("--txpkts={frame_size}")])
                .collect(),
        },
        huge_pages.memory(),
        &interrupt.children,
    )?;
    interrupt.check()?;
    let by = Instant::now() + LINK_TIMEOUT;
    loop {
        let up = receiver.links_up()?.first() == Some(&true)
            && sender.links_up()?.first() == Some(&true);
        if up {
            break;
        }
        if Instant::now() >= by {
            bail!("the two memif instances did not connect within {LINK_TIMEOUT:?}");
        }
        receiver.pause(POLL_INTERVAL)?;
    }
    // The receiver first, so the first frame finds it polling.
    receiver.command("start")?;
    sender.command("start")?;
    eprintln!("guestnet bench: memif linked, both testpmds forwarding");
    receiver.pause(WARM_UP)?;
    let first = receiver.port_stats()?;
    let t0 = Instant::now();
    receiver.pause(Duration::from_secs_f64(seconds))?;
    let last = receiver.port_stats()?;
    let window = t0.elapsed();
    sender.command("stop")?;
    receiver.command("stop")?;
    let count = |ports: &[testpmd::PortStats]| ports.first().map(|p| p.rx_packets);
    let (Some(before), Some(after)) = (count(&first), count(&last)) else {
        bail!("the memif receiver shows no port");
    };
    let received = after.saturating_sub(before);
    sender.quit().context("memif sender")?;
    receiver.quit().context("memif receiver")?;
    drop(huge_pages);
    Ok(Measured {
        throughput: Throughput::of(received, frame_size, window.as_nanos() as u64),
        received,
        window,
    })
}
