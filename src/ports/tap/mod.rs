//! The TAP port: a kernel network stack as a guest.
//!
//! A TAP device is an Ethernet interface whose wire is a file descriptor: what the kernel
//! sends through the interface can be read from the descriptor, and what is written there
//! arrives at the interface as if from a wire. Putting a TAP in a network namespace and
//! joining it to a network as a peer makes that namespace's whole TCP/IP stack a guest of
//! the network, as a VM would be.
//!
//! **Where the device is born.** With a namespace, the device is created (or attached to)
//! by a short-lived thread that first enters the namespace (`setns` on `/run/netns/NAME`),
//! so it is born there and never appears in the caller's namespace; the same thread opens
//! the [`LinkMonitor`], whose netlink socket is bound to the namespace it is created in.
//! After that, both descriptors work from any thread.
//!
//! **Following the interface.** The peer publishes the interface's MAC. The kernel
//! announces what `ip link set` changes ([`rtnetlink`](super::rtnetlink)), and the port
//! mirrors it: a new MAC is published, promiscuous mode on the interface makes the peer
//! promiscuous, and an interface brought down marks the peer's link down, so senders drop
//! and count the frames meant for it until it comes back up. The peer keeps all-multicast
//! on whatever the interface says: a kernel stack joins groups (IPv6 neighbour discovery,
//! mDNS) that its link messages do not list, and it filters multicast itself.
//!
//! **Moving frames.** Each TAP runs three threads:
//!
//! * the **reader** sleeps in `poll` on the device and sends what it reads into the
//!   network in batches; the **writer** sleeps on the peer's ring and writes what it
//!   drains to the device, then reads the stack's answers itself (`frames.rs`);
//! * the **monitor** listens to link events.
//!
//! A process may serve several devices, each in its own namespace
//! ([`TapPort::serve_all`], `guestnet tap --ifname … --netns … --ifname … --netns …`):
//! then a frame from one of them to another is written straight to that device by the
//! thread that read it, and the answer read back at once, with no thread woken on the
//! way (see `frames.rs`).
//!
//! Any of them that meets the end of the device (deleted with `ip link del`) rings the
//! port's own doorbell, so the others stop too; a port's [`serve`](TapPort::serve) also
//! returns when the caller's stop doorbell rings (on SIGINT or SIGTERM in the command).
//!
//! **Leaving nothing behind.** A device this port created is not persistent: the kernel
//! deletes it when the port's descriptor closes, even if the process is killed. A device
//! that existed before (`ip tuntap add … mode tap`, attached to with
//! [`DeviceMode::Attach`]) stays.
//!
//! **Offloads.** By default the device is opened with the virtio-net header
//! (`IFF_VNET_HDR`, the kernel's 10-byte layout) and with checksum and segmentation
//! offloads (`TUNSETOFFLOAD`: CSUM, TSO4, TSO6, and USO where the kernel has it). The
//! kernel then hands over TCP super-frames of up to 64 KiB with their checksums left
//! undone, and takes them back the same way: one read and one write per 64 KiB instead of
//! per 1.5 KiB. The peer advertises those offloads, so super-frames travel whole between
//! such TAPs; peers that cannot take them get them segmented and checksummed by the
//! network ([`crate::network`]). `--no-offload` opens the device without the header:
//! the kernel then segments and checksums everything itself. `from_device` and
//! `to_device` are the one place where frames cross the device boundary and the header
//! is taken off and put on.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::thread::LinkNameSpaceType;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::network::Control;
use crate::network::IoError;
use crate::network::offloads;
use crate::network::{JoinOptions, Network, Peer, PortKind, Receiver, Sender};
use crate::wire::MacAddress;

use super::doorbell::Doorbell;
use super::rtnetlink::{LinkEvent, LinkMonitor, LinkState};
use super::wait;

mod frames;

pub use frames::READ_BATCH;

/// How long the kernel may take to answer the first state request.
const STATE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where named network namespaces live (`ip netns add` creates them there).
pub const NETNS_DIR: &str = "/run/netns";

/// Whether the port makes the device or takes one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceMode {
    /// Create the device; fail if an interface of that name exists. It disappears when
    /// the port ends.
    #[default]
    Create,
    /// Attach to an existing TAP device (made with `ip tuntap add … mode tap`); fail if
    /// there is none. It stays when the port ends.
    Attach,
}

/// How to open a TAP port.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// Interface name (at most 15 bytes).
    pub ifname: String,
    /// Named network namespace (`/run/netns/NAME`) to put the device in, or to find it in.
    pub netns: Option<String>,
    /// MAC to give the interface; by default the kernel's (random) one is kept.
    pub mac: Option<MacAddress>,
    /// Create or attach.
    pub mode: DeviceMode,
    /// Open the device with the virtio-net header and checksum/segmentation offloads.
    pub offload: bool,
    /// What the port enforces for its guests (`--lock-mac`, `--isolated`).
    pub policy: crate::ports::policy::PortPolicy,
}

/// Errors of a TAP port's control path.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The namespace could not be entered.
    #[error("cannot enter network namespace {name:?} ({NETNS_DIR}/{name})")]
    Namespace {
        /// Its name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `--create`, but an interface of that name exists.
    #[error("interface {0} already exists (attach to a TAP device with --attach)")]
    Exists(String),
    /// `--attach`, but there is no interface of that name.
    #[error(
        "there is no interface {0} to attach to (create it with `ip tuntap add {0} mode tap`, or drop --attach)"
    )]
    Missing(String),
    /// The MAC cannot be given to an interface (multicast or zero).
    #[error("{0} cannot be an interface's address (multicast or zero)")]
    BadMac(MacAddress),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The network refused an operation.
    #[error(transparent)]
    Network(#[from] crate::network::Error),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> TapError {
    crate::network::io_error_as(context)
}

/// The device and what was learned while in its namespace.
struct Opened {
    device: SyncDevice,
    mac: MacAddress,
    monitor: LinkMonitor,
}

/// A TAP device joined to a network, ready to serve.
pub struct TapPort {
    device: SyncDevice,
    /// Whether the device speaks the virtio-net header.
    offload: bool,
    /// The offload work the device takes (what the peer advertises).
    takes: u32,
    peer: Peer,
    monitor: LinkMonitor,
    ifname: String,
    /// What was last published from the interface's state, so repeats cost nothing.
    published: Published,
}

impl std::fmt::Debug for TapPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapPort")
            .field("ifname", &self.ifname)
            .field("peer", &self.peer)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

/// The peer state derived from the interface, as last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    link_down: bool,
    promiscuous: bool,
    mac: MacAddress,
}

impl TapPort {
    /// Creates or attaches to the device (in its namespace, if one is named), joins the
    /// network as a peer publishing the interface's MAC, and applies the interface's
    /// current state. Nothing moves until [`serve`](TapPort::serve).
    pub fn open(network: &Network, options: &TapOptions) -> Result<TapPort, TapError> {
        if let Some(mac) = options.mac
            && (mac.is_multicast() || mac.is_zero())
        {
            return Err(TapError::BadMac(mac));
        }
        // The device's MTU follows the network's, so the kernel does not build frames
        // the network would refuse. A TAP's MTU is at most 65535.
        let mtu = u16::try_from(network.geometry().mtu).unwrap_or(u16::MAX);
        let opened = in_namespace(options.netns.as_deref(), || open_device(options, mtu))?;
        let Opened {
            device,
            mac,
            mut monitor,
        } = opened;
        let offload = options.offload;
        let taken = match (offload, device.udp_gso()) {
            (false, _) => 0,
            (true, true) => offloads::ALL,
            (true, false) => offloads::CHECKSUM | offloads::TSO4 | offloads::TSO6,
        };
        let peer = network.join(JoinOptions {
            kind: PortKind::Tap,
            mac: Some(mac),
            promiscuous: false,
            label: options.ifname.clone(),
            offloads: taken,
            vlans: options.policy.vlans,
            ..JoinOptions::default()
        })?;
        options.policy.apply(&peer.control())?;
        monitor
            .request_state()
            .map_err(io_error("ask the kernel for the interface's state"))?;
        let mut port = TapPort {
            device,
            offload,
            takes: taken,
            peer,
            monitor,
            ifname: options.ifname.clone(),
            published: Published {
                link_down: false,
                promiscuous: false,
                mac,
            },
        };
        port.await_first_state()?;
        Ok(port)
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The peer's slot.
    pub fn index(&self) -> u16 {
        self.peer.index()
    }

    /// The MAC the peer publishes.
    pub fn mac(&self) -> MacAddress {
        self.peer.mac()
    }

    /// Reads link events until the answer to the state request has been applied, so that
    /// a port reported ready already shows the interface as it is.
    fn await_first_state(&mut self) -> Result<(), TapError> {
        let control = self.peer.control();
        let deadline = std::time::Instant::now() + STATE_TIMEOUT;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io_error("wait for the interface's state")(
                    io::ErrorKind::TimedOut.into(),
                ));
            }
            // Whether the monitor woke us or the time ran out, the read below tells.
            wait::first_ready([(self.monitor.as_fd(), ())], Some(left))
                .map_err(io_error("wait for the interface's state"))?;
            events.clear();
            match self.monitor.read(&mut events) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_error("read the interface's state")(e)),
            }
            let mut applied = false;
            for event in &events {
                match event {
                    LinkEvent::Changed(state) => {
                        self.published = apply(&control, &self.ifname, self.published, state);
                        applied = true;
                    }
                    LinkEvent::Removed => {
                        return Err(io_error(format!("open {}", self.ifname))(io::Error::other(
                            "the interface was removed",
                        )));
                    }
                }
            }
            if applied {
                return Ok(());
            }
        }
    }

    /// Moves frames until `stop` rings or the device goes away; the peer has left when
    /// this returns (the device too, unless it was attached to).
    pub fn serve(self, stop: &Doorbell) -> Result<(), TapError> {
        TapPort::serve_all(vec![self], stop)
            .pop()
            .map_or(Ok(()), |(_, result)| result)
    }

    /// Serves several ports in this process until `stop` rings, each until its device
    /// goes away: as [`serve`](TapPort::serve) each, and a frame from one of these devices
    /// to another is written straight to it (see `frames.rs`). Returns each port's
    /// interface name and outcome; a port's peer leaves when it ends.
    pub fn serve_all(ports: Vec<TapPort>, stop: &Doorbell) -> Vec<(String, Result<(), TapError>)> {
        let mut devices = Vec::with_capacity(ports.len());
        let mut links = Vec::with_capacity(ports.len());
        let mut halves = Vec::with_capacity(ports.len());
        let mut results: Vec<(String, Result<(), TapError>)> = Vec::with_capacity(ports.len());
        for port in ports {
            let ifname = port.ifname.clone();
            match port.prepare() {
                Ok((device, link, split)) => {
                    devices.push(device);
                    links.push(link);
                    halves.push(split);
                }
                Err(e) => results.push((ifname, Err(e))),
            }
        }
        let frames: Vec<frames::Frames<'_>> = devices
            .iter()
            .zip(halves)
            .map(|(device, halves)| {
                frames::Frames::new(
                    &device.device,
                    (device.offload, device.takes),
                    halves,
                    &device.ifname,
                    &device.closed,
                )
            })
            .collect();
        let frames = &frames;
        let served: Vec<Result<(), TapError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = links
                .into_iter()
                .zip(&devices)
                .enumerate()
                .map(|(own, (mut link, device))| {
                    let port = &frames[own];
                    let (closed, ifname) = (&device.closed, device.ifname.as_str());
                    scope.spawn(move || {
                        std::thread::scope(|inner| {
                            let reader = inner.spawn(|| {
                                port.read_device(frames, stop);
                                closed.ring();
                            });
                            let writer = inner.spawn(|| {
                                port.write_device(frames, stop);
                                closed.ring();
                            });
                            let monitored = follow_link(
                                &mut link.monitor,
                                &link.control,
                                link.published,
                                stop,
                                closed,
                                ifname,
                            );
                            closed.ring();
                            let _ = reader.join();
                            let _ = writer.join();
                            // The peer leaves with its last half (the other ports may
                            // serve on).
                            port.end();
                            drop(link);
                            monitored
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        Err(io_error("serve the device")(io::Error::other("panicked")))
                    })
                })
                .collect()
        });
        results.extend(devices.iter().map(|d| d.ifname.clone()).zip(served));
        results
    }

    /// Makes the device non-blocking and splits the peer, ready to serve.
    fn prepare(self) -> Result<(Served, Link, (Sender, Receiver)), TapError> {
        let TapPort {
            device,
            offload,
            takes,
            peer,
            monitor,
            ifname,
            published,
        } = self;
        device
            .set_nonblocking(true)
            .map_err(io_error(format!("make {ifname} non-blocking")))?;
        let closed = Doorbell::new().map_err(io_error("create the port's doorbell"))?;
        let control = peer.control();
        let served = Served {
            device,
            offload,
            takes,
            ifname,
            closed,
        };
        let link = Link {
            control,
            monitor,
            published,
        };
        Ok((served, link, peer.split()))
    }
}

/// A device being served, as the data path sees it.
struct Served {
    device: SyncDevice,
    offload: bool,
    takes: u32,
    ifname: String,
    /// Rung when the port ends, so its threads stop.
    closed: Doorbell,
}

/// What a served port's link monitor needs.
struct Link {
    control: Control,
    monitor: LinkMonitor,
    published: Published,
}

/// Runs `work` in a thread that entered network namespace `netns` (or in a thread of our
/// own namespace when there is none), so that the devices and sockets it opens belong
/// there. The thread ends with `work`; the caller's threads never change namespace.
fn in_namespace<T: Send>(
    netns: Option<&str>,
    work: impl FnOnce() -> Result<T, TapError> + Send,
) -> Result<T, TapError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(name) = netns {
                    let namespace_error = |source| TapError::Namespace {
                        name: name.to_string(),
                        source,
                    };
                    if name.is_empty() || name.contains('/') || name.starts_with('.') {
                        return Err(namespace_error(io::ErrorKind::InvalidInput.into()));
                    }
                    let file = File::open(std::path::Path::new(NETNS_DIR).join(name))
                        .map_err(namespace_error)?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(LinkNameSpaceType::Network),
                    )
                    .map_err(|e| namespace_error(e.into()))?;
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io_error("open the device")(io::Error::other("panicked"))))
    })
}

/// Opens the device in the current thread's namespace.
fn open_device(options: &TapOptions, mtu: u16) -> Result<Opened, TapError> {
    let ifname = &options.ifname;
    let probe = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .map_err(|e| io_error("open a socket to look up interfaces")(e.into()))?;
    let exists = rustix::net::netdevice::name_to_index(&probe, ifname).is_ok();
    let mut builder = DeviceBuilder::new()
        .name(ifname.as_str())
        .layer(Layer::L2)
        .offload(options.offload);
    match options.mode {
        DeviceMode::Create if exists => return Err(TapError::Exists(ifname.clone())),
        DeviceMode::Attach if !exists => return Err(TapError::Missing(ifname.clone())),
        // Up, and at the network's MTU.
        DeviceMode::Create => builder = builder.mtu(mtu),
        // The administrator's device keeps its settings.
        DeviceMode::Attach => builder = builder.inherit_enable_state(),
    }
    if let Some(mac) = options.mac {
        builder = builder.mac_addr(mac.octets());
    }
    let device = builder
        .build_sync()
        .map_err(io_error(format!("open TAP device {ifname}")))?;
    let ifindex = rustix::net::netdevice::name_to_index(&probe, ifname)
        .map_err(|e| io_error(format!("find interface {ifname}"))(e.into()))?;
    let mac = device
        .mac_address()
        .map_err(io_error(format!("read the MAC of {ifname}")))?;
    let monitor =
        LinkMonitor::open(ifindex).map_err(io_error("open a netlink socket for link events"))?;
    Ok(Opened {
        device,
        mac: MacAddress(mac),
        monitor,
    })
}

/// What woke a poll on a device or socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// Input waits.
    Ready,
    /// One of the doorbells rang.
    Stop,
}

/// Sleeps until `source` is readable or either doorbell rings.
fn wait_readable(source: &impl AsFd, stop: &Doorbell, closed: &Doorbell) -> io::Result<Wake> {
    let sources = [
        (stop.as_fd(), Wake::Stop),
        (closed.as_fd(), Wake::Stop),
        (source.as_fd(), Wake::Ready),
    ];
    loop {
        if let Some(wake) = wait::first_ready(sources, None)? {
            return Ok(wake);
        }
    }
}

/// The monitor: mirrors the interface's state onto the peer until told to stop or the
/// interface is removed.
fn follow_link(
    monitor: &mut LinkMonitor,
    control: &Control,
    mut published: Published,
    stop: &Doorbell,
    closed: &Doorbell,
    ifname: &str,
) -> Result<(), TapError> {
    let mut events = Vec::new();
    loop {
        match wait_readable(monitor, stop, closed) {
            Ok(Wake::Ready) => {}
            Ok(Wake::Stop) => return Ok(()),
            Err(e) => return Err(io_error("wait for link events")(e)),
        }
        events.clear();
        match monitor.read(&mut events) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Events were lost: ask for the whole state again.
                monitor
                    .request_state()
                    .map_err(io_error("ask the kernel for the interface's state"))?;
                continue;
            }
            Err(e) => return Err(io_error("read link events")(e)),
        }
        for event in &events {
            match event {
                LinkEvent::Changed(state) => {
                    published = apply(control, ifname, published, state);
                }
                LinkEvent::Removed => {
                    tracing::info!(port = ifname, "the interface was removed; stopping");
                    return Ok(());
                }
            }
        }
    }
}

/// Writes what changed in the interface's state to the peer; returns what is published.
fn apply(control: &Control, ifname: &str, old: Published, state: &LinkState) -> Published {
    let locked = control.mac_locked();
    let mut new = Published {
        link_down: !state.is_up(),
        promiscuous: state.is_promiscuous(),
        mac: state.mac.unwrap_or(old.mac),
    };
    let report = |what: &str, result: crate::network::Result<()>| {
        if let Err(e) = result {
            tracing::warn!(port = ifname, error = %e, "cannot publish the interface's {what}");
        }
    };
    if new.link_down != old.link_down {
        tracing::info!(port = ifname, down = new.link_down, "link state changed");
        report("link state", control.set_link_down(new.link_down));
    }
    if new.promiscuous != old.promiscuous {
        tracing::info!(
            port = ifname,
            on = new.promiscuous,
            "promiscuous mode changed"
        );
        report("promiscuous mode", control.set_promiscuous(new.promiscuous));
    }
    if new.mac != old.mac && new.mac != control.mac() && locked {
        // Locked to the address it started with: the new one is not published, and
        // frames from it are refused as spoofed.
        tracing::warn!(port = ifname, mac = %new.mac, kept = %control.mac(), "the interface changed its MAC, but the port is locked to its first one");
        new.mac = old.mac;
    } else if new.mac != old.mac && new.mac != control.mac() {
        match control.set_mac_address(new.mac) {
            Ok(()) => tracing::info!(port = ifname, mac = %new.mac, "published the new MAC"),
            Err(e) => {
                // Another peer holds it: keep the old one published; the new address is
                // still reached through learning.
                tracing::warn!(port = ifname, mac = %new.mac, error = %e, "cannot publish the interface's new MAC");
                new.mac = old.mac;
            }
        }
    }
    new
}
