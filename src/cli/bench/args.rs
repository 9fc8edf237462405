//! The command lines of `bench` and of the worker processes it starts.

use std::path::PathBuf;

use crate::ports::vhost_user::Steering;
use crate::wire::MacAddress;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  guestnet bench --frame-size 64 --senders 4\n  \
    sudo guestnet bench --netns --seconds 5\n  \
    sudo guestnet bench --netns --rate 200m --seconds 5   # how close TCP holds a rate limit, against tc tbf"
)]
pub struct BenchArgs {
    /// Bytes per frame, Ethernet header included (48 to 1514).
    #[arg(long, default_value_t = 64)]
    pub frame_size: usize,
    /// Sender processes (1 to 64).
    #[arg(long, default_value_t = 1)]
    pub senders: u16,
    /// Seconds each of the two measurements lasts [with --vm: each test, default 5].
    #[arg(long, default_value_t = 3.0, default_value_if("vm", "true", "5"))]
    pub seconds: f64,
    /// Frames per `send_batch` call (1 to 4096).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Slots of the receiver's ring (a power of two) [default: 256; with --netns, --vm or
    /// --vhost-user 1024, what kernel stacks behind TAPs and virtqueues of 1024 want: see
    /// the README's performance section].
    #[arg(long)]
    pub ring_slots: Option<u32>,
    /// Leave the workers unpinned (the scheduler places them).
    #[arg(long)]
    pub no_pin: bool,
    /// Skip the second anchor, DPDK memif (two dpdk-testpmd joined by net_memif), measured
    /// by default when dpdk-testpmd is installed.
    #[arg(long)]
    pub no_memif: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Instead: TCP throughput and ping latency between two network namespaces through
    /// guestnet's TAP ports and through a Linux bridge, offloads on and off (as root).
    #[arg(long, conflicts_with_all = ["frame_size", "senders", "batch", "no_pin", "no_memif"])]
    pub netns: bool,
    /// With --netns: use the built-in TCP stream even if iperf3 is installed.
    #[arg(long, requires = "netns")]
    pub no_iperf: bool,
    /// With --netns: also measure a rate limit, in bits per second (`200m`, `1g`): iperf3
    /// TCP from a namespace whose TAP port has `--rate RATE`, against the Linux bridge with
    /// the sender's veth limited by `tc qdisc … tbf rate RATE` (needs iperf3 and tc).
    /// Example: `--netns --rate 200m`.
    #[arg(
        long,
        value_name = "RATE",
        requires = "netns",
        conflicts_with = "no_iperf",
        value_parser = crate::network::rate::parse_rate
    )]
    pub rate: Option<u64>,
    /// With --rate: the burst, in bytes, of guestnet's bucket and of the anchor's tbf
    /// [default: as `guestnet tap --rate`, 10 ms of the rate, at least 128 KiB].
    #[arg(long, value_name = "BYTES", requires = "rate", value_parser = crate::cli::policy::parse_burst)]
    pub burst: Option<u64>,
    /// Instead: TCP throughput and UDP packet rate (iperf3) between two QEMU guests through
    /// guestnet's vhost-user ports and through TAP devices on a Linux bridge (as root).
    #[arg(long, conflicts_with_all = ["frame_size", "senders", "batch", "no_pin", "netns", "no_memif"])]
    pub vm: bool,
    /// Instead: frames between two DPDK virtio-user frontends (dpdk-testpmd) through
    /// guestnet's vhost-user ports and through DPDK's vhost PMD, request/response and one
    /// way (DPDK needed; huge pages are reserved if missing).
    #[arg(long, conflicts_with_all = ["senders", "batch", "no_pin", "netns", "vm", "no_memif"])]
    pub vhost_user: bool,
    /// With --vhost-user: CPUs the switch runs on (the frontends get the others).
    #[arg(long, requires = "vhost_user", default_value_t = 1)]
    pub switch_cores: usize,
    /// With --vhost-user: queue pairs of each frontend and of both switches (1 to 16); with
    /// more than one, each test also runs with one, and the two are compared.
    #[arg(long, requires = "vhost_user", default_value_t = 1)]
    pub queues: u16,
    /// With --vhost-user: the steering of guestnet's port (`guestnet vhost-user
    /// --steering`), which decides with several queue pairs which receive queue a frame
    /// from the other frontend takes.
    #[arg(long, requires = "vhost_user", value_enum, default_value_t = Steering::Queue)]
    pub steering: Steering,
    /// With --vm: the guest image (vmlinuz, initramfs.cpio.gz) of scripts/guest-image,
    /// built there by the script when missing.
    #[arg(long, requires = "vm", default_value = "target/guest")]
    pub image_dir: PathBuf,
}

/// What a worker process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Sends bench frames into the network.
    Sender,
    /// Receives them from the network.
    Receiver,
    /// Sends bench frames into the anchor socket.
    AnchorSender,
    /// Receives them from the anchor socket.
    AnchorReceiver,
}

/// Arguments of the hidden worker.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// What to do.
    #[arg(long, value_enum)]
    pub(super) role: Role,
    /// Private directory of the run (network and socket).
    #[arg(long)]
    pub(super) workspace: PathBuf,
    /// Sender number, or the number of senders for a receiver.
    #[arg(long)]
    pub(super) id: u16,
    /// Receiver's MAC (senders).
    #[arg(long)]
    pub(super) to: Option<MacAddress>,
    /// Bytes per frame.
    #[arg(long)]
    pub(super) frame_size: usize,
    /// Frames per batch.
    #[arg(long)]
    pub(super) batch: usize,
    /// CPU to pin to.
    #[arg(long)]
    pub(super) cpu: Option<usize>,
}
