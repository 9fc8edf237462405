//! The `guestnet` command: argument parsing and one module per subcommand.
//!
//! Subcommands are thin: they parse, open the network, and hand over to the library
//! (`network`, `ports`). Errors are `anyhow` here and only here.
//!
//! Beside the subcommands, a few modules serve several of them and import none of them,
//! so no two files of the command import each other: [`format`](mod@format) writes
//! figures and tables, [`port_status`] keeps the list of ports that show their own status
//! in `status`, [`netns`] drives namespaces and their tools, [`child`] keeps the child
//! processes a run starts, and [`guest`] boots the QEMU guests of `bench --vm` (and of
//! `tests/qemu.rs`).

pub mod admin;
pub mod bench;
pub mod capture;
pub mod child;
pub mod demo;
pub mod dgram;
pub mod dhcp;
pub mod format;
pub mod guest;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod port_status;
pub mod stream;
pub mod tap;
pub mod traffic;
pub mod up;
pub mod vhost_user;
pub mod vxlan;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The environment variable holding the command's log filter (`tracing`'s `EnvFilter`
/// syntax, `warn` when unset): `GUESTNET_LOG=debug`, `GUESTNET_LOG=warn,guestnet::ports=info`.
pub const LOG_VARIABLE: &str = "GUESTNET_LOG";

/// A shared virtual Ethernet for the VMs, namespaces and processes of one host.
#[derive(Debug, Parser)]
#[command(
    name = "guestnet",
    version,
    about,
    after_help = "Examples:\n  guestnet create lab\n  guestnet stream lab --listen /tmp/lab.sock\n  guestnet vhost-user lab --socket /tmp/vm0.sock\n  guestnet capture lab -w lab.pcap -c 100\n  guestnet dhcp lab --subnet 10.0.0.0/24 --range 10.0.0.10-10.0.0.99 --domain lab.internal\n  guestnet status lab\n  guestnet metrics --listen 127.0.0.1:9469\n  guestnet up /etc/guestnet/guestnet.toml\n  guestnet bench --frame-size 64"
)]
pub struct Cli {
    /// Directory holding the networks [default: $GUESTNET_DIR or /dev/shm/guestnet]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The directory of the networks.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(crate::network::default_dir)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a network.
    Create(admin::CreateArgs),
    /// Remove a network.
    Destroy(admin::DestroyArgs),
    /// List the networks.
    List(admin::ListArgs),
    /// Show a network's peers, counters and learned addresses.
    Status(admin::StatusArgs),
    /// Serve QEMU `-netdev stream` clients on a unix socket.
    Stream(stream::StreamArgs),
    /// Serve QEMU `-netdev dgram` senders on a unix datagram socket.
    Dgram(dgram::DgramArgs),
    /// Put kernel network stacks on a network through TAP devices.
    Tap(tap::TapArgs),
    /// Serve VMs through their virtio-net driver over vhost-user (QEMU, cloud-hypervisor).
    VhostUser(vhost_user::VhostUserArgs),
    /// Join the same network on other hosts over VXLAN (RFC 7348).
    Vxlan(vxlan::VxlanArgs),
    /// Capture a network's frames into a pcap file.
    Capture(capture::CaptureArgs),
    /// Serve DHCPv4, and DNS for the guests' names, on a network.
    Dhcp(dhcp::DhcpArgs),
    /// Serve the networks' counters to Prometheus at /metrics.
    Metrics(metrics::MetricsArgs),
    /// Run and supervise the networks, ports and services a TOML file declares.
    Up(up::UpArgs),
    /// Show guestnet at work: two namespaces on TAP ports, ping, TCP, capture (as root).
    Demo(demo::DemoArgs),
    /// Measure throughput, wake-ups and latency against a socket baseline.
    Bench(bench::BenchArgs),
    /// Send numbered, checksummed test frames.
    Pktgen(traffic::PktgenArgs),
    /// Receive and verify test frames from pktgen.
    Sink(traffic::SinkArgs),
    /// Internal: a benchmark worker process.
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
    /// Internal: receive a TCP stream and print its length and checksum.
    #[command(name = "__tcp-recv", hide = true)]
    TcpRecv(demo::TcpRecvArgs),
    /// Internal: send a TCP stream and print its length and checksum.
    #[command(name = "__tcp-send", hide = true)]
    TcpSend(demo::TcpSendArgs),
}

impl Command {
    /// Whether the command only prints a report and exits. These end quietly when their
    /// reader goes away (`guestnet status lab | head -2`), as `ls` does; the others serve
    /// sockets and pipes, where a closed peer must be an error on that one connection.
    pub fn only_prints_a_report(&self) -> bool {
        matches!(
            self,
            Command::Create(_) | Command::Destroy(_) | Command::List(_) | Command::Status(_)
        )
    }
}

/// An error and its causes as one line: `what failed: why: why that`.
///
/// A cause whose words the message already holds is left out: the control path's errors
/// name their cause in their own message (so that a bare `to_string()` says everything)
/// and also return it as their `source()`, and printing both would say it twice.
pub fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.dir();
    match cli.command {
        Command::Create(args) => admin::create(&dir, args),
        Command::Destroy(args) => admin::destroy(&dir, args),
        Command::List(args) => admin::list(&dir, args),
        Command::Status(args) => admin::status(&dir, args),
        Command::Stream(args) => stream::run(&dir, args),
        Command::Dgram(args) => dgram::run(&dir, args),
        Command::Tap(args) => tap::run(&dir, args),
        Command::VhostUser(args) => vhost_user::run(&dir, args),
        Command::Vxlan(args) => vxlan::run(&dir, args),
        Command::Capture(args) => capture::run(&dir, args),
        Command::Dhcp(args) => dhcp::run(&dir, args),
        Command::Metrics(args) => metrics::run(&dir, args),
        Command::Up(args) => up::run(&dir, args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(&dir, args),
        Command::Pktgen(args) => traffic::pktgen(&dir, args),
        Command::Sink(args) => traffic::sink(&dir, args),
        Command::BenchWorker(args) => bench::worker(&dir, args),
        Command::TcpRecv(args) => demo::tcp_recv(args),
        Command::TcpSend(args) => demo::tcp_send(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let error = anyhow::Error::new(crate::network::Error::Io(crate::network::IoError {
            context: "create /somewhere".into(),
            source: io,
        }));
        let message = error_message(&error);
        assert_eq!(message.matches("Permission denied").count(), 1, "{message}");
        assert!(message.starts_with("create /somewhere: "), "{message}");
    }

    #[test]
    fn a_context_and_a_new_cause_are_both_printed() {
        let error = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("open the capture file");
        assert_eq!(
            error_message(&error),
            format!(
                "open the capture file: {}",
                std::io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
    }
}
