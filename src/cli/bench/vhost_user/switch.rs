//! The two switches of `bench --vhost-user`, behind one face: guestnet's vhost-user port
//! and the anchor, DPDK's vhost PMD in a testpmd. Each serves the frontends' two sockets
//! and says, at any moment, what it has cost and what it has dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::super::process::{Interrupt, NETWORK, Workspace, on_cpus};
use super::super::testpmd::{Instance, Memory, Testpmd};
use crate::bench::seen_by_receiver_only;
use crate::cli::LOG_VARIABLE;
use crate::cli::guest::{Console, Stderr};
use crate::cli::port_status::PortStatuses;
use crate::network::Network;
use crate::network::counters::DropReason;
use crate::ports::vhost_user::{State, Steering, UNSEALED_MEMORY};

/// The frontends' MACs (locally administered), `a` first.
pub(super) const MACS: [&str; 2] = ["02:67:6e:62:00:0a", "02:67:6e:62:00:0b"];
/// The frontends' names.
pub(super) const SIDES: [&str; 2] = ["a", "b"];
/// Frames per testpmd burst, the anchor's and the frontends'; in the request/response
/// test, the frames each frontend starts the loop with.
pub(super) const BURST: u64 = 32;
/// Between two looks at counters that are expected to change soon.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long the frontends may take to be seen by the switch, or gone from it.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guestnet backend may take to say it listens, or to exit after SIGTERM.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a switch says at one moment.
#[derive(Debug, Clone, Default)]
pub(super) struct SwitchSample {
    /// The process's user and system time, in clock ticks.
    pub(super) cpu_ticks: u64,
    /// Voluntary context switches of its threads.
    pub(super) sleeps: u64,
    /// guestnet: its peers' receiver wake-ups.
    pub(super) wakeups: Option<u64>,
    /// Frames dropped, each once: a → b, b → a.
    pub(super) dropped: [u64; 2],
    /// The same by reason.
    pub(super) drops_by_reason: BTreeMap<String, u64>,
    /// Of those, the ones the vhost-user ports counted (guestnet), by direction and reason:
    /// their counters reach the status file late, and are read again at the end.
    port_dropped: [u64; 2],
    port_drops_by_reason: BTreeMap<String, u64>,
}

/// guestnet or the anchor, serving the frontends' two sockets.
pub(super) enum Switch {
    Guestnet(GuestnetSwitch),
    Anchor(AnchorSwitch),
}

/// The bench's port logs warnings as any port does, less the one about unsealed memory.
fn bench_log_filter() -> String {
    format!("warn,{UNSEALED_MEMORY}=error")
}

impl Switch {
    /// guestnet's vhost-user port on the switch's CPUs, offering `queues` queue pairs and
    /// steering frames between them by `steering`, with a network of its own.
    pub(super) fn guestnet(
        workspace: &Workspace,
        ring_slots: u32,
        cpus: &[usize],
        (queues, steering): (u16, Steering),
        interrupt: &Interrupt,
    ) -> anyhow::Result<Switch> {
        let network = workspace.create_network(ring_slots)?;
        let sockets = SIDES.map(|side| workspace.path().join(format!("guestnet-{side}.sock")));
        let mut switch = GuestnetSwitch {
            backend: None,
            network: Some(network),
            dir: workspace.path().to_path_buf(),
            sockets,
        };
        let mut command = Command::new(std::env::current_exe().context("find own executable")?);
        command
            .arg("--dir")
            .arg(workspace.path())
            .args(["vhost-user", NETWORK])
            .arg("--queues")
            .arg(queues.to_string())
            .arg("--steering")
            .arg(steering.name());
        for (socket, mac) in switch.sockets.iter().zip(MACS) {
            command.arg("--socket").arg(socket).arg("--mac").arg(mac);
        }
        // The port warns once per connection that a frontend could crash it by shrinking
        // unsealed guest memory. DPDK's frontends never seal theirs, and this run's memory
        // and frontends are its own: the warning says nothing here, and would stand
        // between the run's lines. Every other warning stays; a filter of the user's own
        // is left as it is.
        if std::env::var_os(LOG_VARIABLE).is_none() {
            command.env(LOG_VARIABLE, bench_log_filter());
        }
        let children = &interrupt.children;
        let backend = switch.backend.insert(on_cpus(cpus, || {
            Console::spawn(
                command,
                "guestnet vhost-user port",
                Stderr::Inherit,
                children,
            )
        })?);
        interrupt.check()?;
        for socket in &switch.sockets {
            let line = backend.expect("listening", Instant::now() + BACKEND_TIMEOUT)?;
            if !line.ends_with(&socket.display().to_string()) {
                bail!(
                    "the vhost-user port said {line:?}, not that it listens on {}",
                    socket.display()
                );
            }
        }
        Ok(Switch::Guestnet(switch))
    }

    /// DPDK's vhost PMD in a testpmd on the switch's CPUs, forwarding, with `queues` queue
    /// pairs on each socket (queue `i` of one forwarded to queue `i` of the other).
    pub(super) fn anchor(
        workspace: &Workspace,
        testpmd: &Path,
        cpus: Vec<usize>,
        queues: u16,
        memory: Memory,
        interrupt: &Interrupt,
    ) -> anyhow::Result<Switch> {
        let sockets = SIDES.map(|side| workspace.path().join(format!("anchor-{side}.sock")));
        let devices = sockets
            .iter()
            .enumerate()
            .map(|(i, socket)| format!("net_vhost{i},iface={},queues={queues}", socket.display()))
            .collect();
        let mut testpmd = Testpmd::start(
            testpmd,
            &Instance {
                name: "anchor",
                cpus,
                devices,
                options: vec![
                    "--forward-mode=io".into(),
                    format!("--burst={BURST}"),
                    format!("--rxq={queues}"),
                    format!("--txq={queues}"),
                ],
            },
            memory,
            &interrupt.children,
        )?;
        // Forwarding from now on: a port whose frontend has not come yet yields nothing.
        testpmd.command("start")?;
        Ok(Switch::Anchor(AnchorSwitch { testpmd, sockets }))
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Switch::Guestnet(_) => "guestnet",
            Switch::Anchor(_) => "anchor",
        }
    }

    pub(super) fn sockets(&self) -> &[PathBuf; 2] {
        match self {
            Switch::Guestnet(switch) => &switch.sockets,
            Switch::Anchor(switch) => &switch.sockets,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Switch::Guestnet(switch) => switch.backend.as_ref().map_or(0, Console::id),
            Switch::Anchor(switch) => switch.testpmd.pid(),
        }
    }

    /// Waits until both frontends are attached and ready (`attached`), or both gone.
    pub(super) fn wait_for_frontends(
        &mut self,
        attached: bool,
        interrupt: &Interrupt,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let sides = match self {
                Switch::Guestnet(switch) => switch.frontends_attached()?,
                Switch::Anchor(switch) => switch.testpmd.links_up()?,
            };
            if sides.len() == 2 && sides.iter().all(|&side| side == attached) {
                return Ok(());
            }
            interrupt.check()?;
            if Instant::now() >= deadline {
                bail!(
                    "the frontends were not {} by the {} within {READY_TIMEOUT:?}",
                    if attached { "seen" } else { "let go" },
                    self.name()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    pub(super) fn sample(&mut self) -> anyhow::Result<SwitchSample> {
        let (cpu_ticks, sleeps) = process_times(self.pid())?;
        let mut sample = SwitchSample {
            cpu_ticks,
            sleeps,
            ..SwitchSample::default()
        };
        match self {
            Switch::Guestnet(switch) => {
                switch.count_network(&mut sample);
                switch.count_ports(&mut sample);
            }
            Switch::Anchor(switch) => {
                let ports = switch.testpmd.port_stats_with_drops()?;
                for (side, port) in ports.iter().take(2).enumerate() {
                    // The frames port `side` could not hand to its frontend were on their
                    // way to it: from the other side.
                    sample.dropped[1 - side] += port.tx_dropped;
                    if port.tx_dropped != 0 {
                        *sample
                            .drops_by_reason
                            .entry(format!("{}_queue_full", SIDES[side]))
                            .or_default() += port.tx_dropped;
                    }
                }
            }
        }
        Ok(sample)
    }

    /// Reads the vhost-user ports' counters again into `sample`.
    pub(super) fn refresh_port_drops(&mut self, sample: &mut SwitchSample) -> anyhow::Result<()> {
        if let Switch::Guestnet(switch) = self {
            for side in 0..2 {
                sample.dropped[side] =
                    sample.dropped[side].saturating_sub(sample.port_dropped[side]);
            }
            for (reason, count) in &sample.port_drops_by_reason {
                if let Some(total) = sample.drops_by_reason.get_mut(reason) {
                    *total = total.saturating_sub(*count);
                }
            }
            sample.port_dropped = [0; 2];
            sample.port_drops_by_reason.clear();
            switch.count_ports(sample);
        }
        Ok(())
    }

    /// Stops the anchor and checks that it ends well (guestnet's port ends when dropped).
    pub(super) fn stop(self) -> anyhow::Result<()> {
        match self {
            Switch::Guestnet(_) => Ok(()),
            Switch::Anchor(switch) => switch.testpmd.quit(),
        }
    }
}

/// The process's CPU time (user and system, in clock ticks, from `/proc/PID/stat`) and the
/// voluntary context switches of all its threads.
fn process_times(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("unexpected /proc/{pid}/stat"))?;
    let mut sleeps = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("read /proc/{pid}/task"))?;
    for task in tasks.filter_map(Result::ok) {
        // A thread may end between listing and reading: it counts no more.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        sleeps += status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok((ticks, sleeps))
}

/// utime + stime from a `/proc/PID/stat` line: fields 14 and 15, counted after the
/// command name, which is in parentheses and may hold spaces.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (the state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// guestnet's side: a network and a `guestnet vhost-user` process serving both sockets;
/// stopped and removed when dropped.
pub(super) struct GuestnetSwitch {
    backend: Option<Console>,
    network: Option<Network>,
    /// The networks' directory (the run's workspace).
    dir: PathBuf,
    sockets: [PathBuf; 2],
}

impl GuestnetSwitch {
    /// For `a` and `b`: whether its frontend is a peer of the network with its queues
    /// running. Once it is not, the port's status file has been written since it left.
    fn frontends_attached(&self) -> anyhow::Result<Vec<bool>> {
        let network = self.network.as_ref().context("the network is gone")?;
        let peers = network.status().peers;
        let sockets = PortStatuses::read(&self.dir, NETWORK).vhost_user;
        Ok(self
            .sockets
            .iter()
            .zip(MACS)
            .map(|(socket, mac)| {
                let joined = peers.iter().any(|p| p.mac.to_string() == mac);
                let running = sockets
                    .iter()
                    .any(|s| s.socket == *socket && s.state == State::Running);
                joined && running
            })
            .collect())
    }

    /// The network's counters: wake-ups, and drops by direction, each frame once (a full
    /// ring is counted by its sender and its receiver; only receivers see some reasons).
    fn count_network(&self, sample: &mut SwitchSample) {
        let Some(network) = &self.network else {
            return;
        };
        let peers = network.status().peers;
        let mut wakeups = 0;
        for peer in &peers {
            wakeups += peer.wakeups;
            let Some(side) = MACS.iter().position(|mac| peer.mac.to_string() == *mac) else {
                continue;
            };
            for reason in DropReason::ALL {
                let sent = format!("tx_{}", reason.name());
                let received = format!("rx_{}", reason.name());
                // What it could not send went its way; what it could not receive came
                // from the other side.
                let counted = [
                    (side, &sent, true),
                    (1 - side, &received, seen_by_receiver_only(reason)),
                ];
                for (direction, name, counts) in counted {
                    let count = peer.drops.get(name).copied().unwrap_or(0);
                    if counts && count != 0 {
                        sample.dropped[direction] += count;
                        *sample.drops_by_reason.entry(name.clone()).or_default() += count;
                    }
                }
            }
        }
        sample.wakeups = Some(wakeups);
    }

    /// The vhost-user ports' frames that never reached their frontend: no room in its
    /// buffers, or held for it when it went.
    fn count_ports(&self, sample: &mut SwitchSample) {
        for status in PortStatuses::read(&self.dir, NETWORK).vhost_user {
            let Some(side) = self.sockets.iter().position(|s| *s == status.socket) else {
                continue;
            };
            let c = &status.counters;
            for (name, count) in [
                ("port_rx_no_room", c.rx_no_room),
                ("port_rx_lost_on_disconnect", c.rx_lost_on_disconnect),
            ] {
                if count != 0 {
                    // Frames to this side came from the other.
                    sample.dropped[1 - side] += count;
                    sample.port_dropped[1 - side] += count;
                    *sample.drops_by_reason.entry(name.to_string()).or_default() += count;
                    *sample
                        .port_drops_by_reason
                        .entry(name.to_string())
                        .or_default() += count;
                }
            }
        }
    }
}

impl Drop for GuestnetSwitch {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take()
            && let Err(e) = backend.terminate(BACKEND_TIMEOUT)
        {
            eprintln!("guestnet bench: warning: {e:#}");
        }
        if let Some(network) = self.network.take() {
            let name = network.name().to_string();
            drop(network);
            let _ = Network::destroy(
                &self.dir,
                &name,
                crate::network::DestroyOptions { force: true },
            );
        }
    }
}

/// The anchor: testpmd with DPDK's vhost PMD on both sockets.
pub(super) struct AnchorSwitch {
    testpmd: Testpmd,
    sockets: [PathBuf; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_user_plus_system_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (dpdk (main) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 25 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("4242 (short) S 1 2"), None);
    }
}
