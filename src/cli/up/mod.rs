//! `up`: run what a TOML file declares — networks, their ports, their services, the
//! metrics exporter — in the foreground, and keep it running.
//!
//! [`config`] turns the file into networks to create and command lines to run; every
//! port, service and exporter is then this same program run as its subcommand
//! (`guestnet --dir DIR tap lab --ifname=gn0 …`), a child process in a process group of
//! its own, so a crash takes down that port alone and `status` shows it as it would show
//! the command typed by hand. A child that dies is started again after a delay that
//! doubles with each death in a row ([`supervise`]: 0.2 s up to 10 s, from the start again
//! once it has run 30 s).
//!
//! A child is **up** once it has written its first line on standard output (every port
//! prints `ready …` or `listening on …` when it serves, `metrics` prints `listening on`),
//! or once a peer it owns shows in its network (a capture, which prints nothing). When
//! every child is up, `up` tells systemd `READY=1` over `$NOTIFY_SOCKET`.
//!
//! `SIGHUP` reads the file again: a child whose normalised command line is unchanged goes
//! on running (and keeps its slots and its guests' connections), removed ones are stopped,
//! new ones started; a file with errors changes nothing and is reported. `SIGTERM` and
//! `SIGINT` stop every child (`SIGTERM` to its group, `SIGKILL` after [`STOP_GRACE`]) and
//! end `up` with success. Networks are left in place, as `create` leaves them. Should
//! `up` be killed outright, the kernel sends each child `SIGTERM`
//! ([`end_with_parent`](crate::shm::end_with_parent)), so no port outlives it.
//!
//! The loop sleeps on a doorbell rung by those signals, by `SIGCHLD` and by the children's
//! output, with a timeout no longer than the next restart, so it costs nothing while
//! everything runs.

pub mod config;
pub mod supervise;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::network::{Error as NetworkError, Network};
use crate::ports::socket::Doorbell;
use config::{ChildPlan, Config, NetworkPlan};
use supervise::Restarts;

/// How long a stopped child has to exit after `SIGTERM` before its group gets `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The longest the loop sleeps: every event it waits for (a signal, a child's death, its
/// output) rings the doorbell, so this only bounds a wait that nothing should need.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// How often a child not yet up is looked for in its network.
const UP_POLL: Duration = Duration::from_millis(100);

/// Arguments of `up`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The file declares networks (`[[network]]`, with the options of `guestnet create` as keys),
their ports (`[[network.port]]`, with `type` naming the port subcommand — tap, vhost-user,
stream, dgram, vxlan, capture — and that subcommand's long options as keys), a DHCP server
(`[network.dhcp]`, the options of `guestnet dhcp`) and the metrics exporter (`[metrics]`,
the options of `guestnet metrics`). Dashes in option names are written as underscores; an
array repeats an option; `true` gives a flag. `guestnet tap --help` lists a TAP port's
keys. Example:

  [metrics]
  listen = \"127.0.0.1:9469\"

  [[network]]
  name = \"lab\"
  mtu = 1500

  [[network.port]]
  type = \"tap\"
  netns = \"red\"
  ifname = \"gn0\"

  [[network.port]]
  type = \"vhost-user\"
  socket = [\"/run/guestnet/vm0.sock\", \"/run/guestnet/vm1.sock\"]

Each port runs as its own child process, restarted with backoff when it dies. A TAP port
with one interface and no `mac` gets a MAC derived from the network, namespace and
interface names, the same on every start. SIGHUP re-reads the file (unchanged ports keep
running); SIGTERM stops everything. Under systemd (Type=notify) READY=1 is sent once every
port is up.

Examples:
  guestnet up --check /etc/guestnet/guestnet.toml
  guestnet up /etc/guestnet/guestnet.toml")]
pub struct UpArgs {
    /// The TOML file declaring networks, ports and services.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Check the file (syntax, keys, values, networks' geometry) and exit without starting
    /// anything.
    #[arg(long)]
    pub check: bool,
}

/// Runs `up` until SIGTERM or SIGINT.
pub fn run(dir: &Path, args: UpArgs) -> anyhow::Result<()> {
    let config = config::load(&args.file)?;
    if args.check {
        check_networks(dir, &config.networks)?;
        println!(
            "{}: ok: {} network{}, {} process{} to run",
            args.file.display(),
            config.networks.len(),
            if config.networks.len() == 1 { "" } else { "s" },
            config.children.len(),
            if config.children.len() == 1 { "" } else { "es" },
        );
        for child in &config.children {
            println!("  guestnet {}", child.args.join(" "));
        }
        return Ok(());
    }
    let bell = Arc::new(Doorbell::new().context("create the wake-up pipe")?);
    let hangup = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGHUP, Arc::clone(&hangup))
        .context("install signal handlers")?;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("install signal handlers")?;
    }
    bell.ring_on_signals(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGCHLD])
        .context("install signal handlers")?;
    let program = std::env::current_exe().context("find this program to run its ports")?;
    let notifier = Notifier::from_env();

    ensure_networks(dir, &config.networks)?;
    let mut supervisor = Supervisor {
        program,
        dir: dir.to_path_buf(),
        bell: Arc::clone(&bell),
        children: Vec::new(),
    };
    let now = Instant::now();
    for plan in config.children {
        supervisor.add(plan, now);
    }
    let mut ready_told = false;
    loop {
        // Drained before the flags are read: a signal after this rings the bell again.
        bell.drain();
        if stop.load(Ordering::SeqCst) {
            notifier.notify("STOPPING=1");
            log(format_args!(
                "stopping {} children",
                supervisor.children.len()
            ));
            supervisor.stop_all();
            log(format_args!("stopped"));
            return Ok(());
        }
        if hangup.swap(false, Ordering::SeqCst) {
            notifier.notify("RELOADING=1");
            match reload(dir, &args.file, &mut supervisor) {
                Ok(()) => ready_told = false,
                Err(error) => {
                    log(format_args!(
                        "reload refused, nothing changed: {}",
                        crate::cli::error_message(&error)
                    ));
                    notifier.notify("READY=1");
                }
            }
        }
        let now = Instant::now();
        supervisor.reap(now);
        supervisor.start_due(now);
        let all_up = supervisor.look_for_up();
        if all_up && !ready_told {
            log(format_args!(
                "all {} children up",
                supervisor.children.len()
            ));
            notifier.notify("READY=1");
            ready_told = true;
        }
        let mut timeout = supervisor
            .next_restart()
            .map_or(IDLE_WAIT, |at| at.saturating_duration_since(now));
        if !all_up {
            timeout = timeout.min(UP_POLL);
        }
        bell.wait(timeout.min(IDLE_WAIT));
    }
}

/// Reads the file again and brings the children in line with it.
fn reload(dir: &Path, file: &Path, supervisor: &mut Supervisor) -> anyhow::Result<()> {
    let Config { networks, children } = config::load(file)?;
    ensure_networks(dir, &networks)?;
    let old: Vec<&[String]> = supervisor
        .children
        .iter()
        .map(|c| c.plan.args.as_slice())
        .collect();
    let new: Vec<&[String]> = children.iter().map(|c| c.args.as_slice()).collect();
    let plan = supervise::reload(&old, &new);
    log(format_args!(
        "reload: {} kept, {} to stop, {} to start",
        plan.keep.len(),
        plan.stop.len(),
        plan.start.len()
    ));
    let mut stopping: Vec<Supervised> = Vec::new();
    let mut kept: Vec<Option<Supervised>> = supervisor.children.drain(..).map(Some).collect();
    for &i in &plan.stop {
        if let Some(child) = kept[i].take() {
            stopping.push(child);
        }
    }
    stop_children(&supervisor.bell, &mut stopping);
    // The kept ones take their place in the new file's order, with its line numbers.
    let mut next: Vec<Option<Supervised>> = (0..children.len()).map(|_| None).collect();
    for &(i, j) in &plan.keep {
        if let Some(mut child) = kept[i].take() {
            child.plan = children[j].clone();
            next[j] = Some(child);
        }
    }
    let now = Instant::now();
    for (j, slot) in next.into_iter().enumerate() {
        match slot {
            Some(child) => supervisor.children.push(child),
            None => supervisor.add(children[j].clone(), now),
        }
    }
    Ok(())
}

/// A line on standard error, where a service's log goes.
fn log(message: std::fmt::Arguments<'_>) {
    eprintln!("guestnet up: {message}");
}

/// Creates the networks that do not exist; fails for one that exists with another shape.
fn ensure_networks(dir: &Path, networks: &[NetworkPlan]) -> anyhow::Result<()> {
    for plan in networks {
        match Network::open(dir, &plan.name) {
            Ok(network) => differences(&network, plan)?,
            Err(NetworkError::NotFound { .. }) => {
                match Network::create(dir, &plan.name, plan.options) {
                    Ok(_) => log(format_args!("created network {}", plan.name)),
                    // Made by someone else in the meantime: it must still fit.
                    Err(NetworkError::Exists(_)) => {
                        differences(&Network::open(dir, &plan.name)?, plan)?
                    }
                    Err(error) => {
                        return Err(error).with_context(|| format!("create network {}", plan.name));
                    }
                }
            }
            Err(error) => return Err(error).with_context(|| format!("open network {}", plan.name)),
        }
    }
    Ok(())
}

/// For `--check`: the networks that exist must fit the file.
fn check_networks(dir: &Path, networks: &[NetworkPlan]) -> anyhow::Result<()> {
    for plan in networks {
        if let Ok(network) = Network::open(dir, &plan.name) {
            differences(&network, plan)?;
        }
    }
    Ok(())
}

/// Fails, saying what differs, when an existing network is not what the file declares.
fn differences(network: &Network, plan: &NetworkPlan) -> anyhow::Result<()> {
    let have = network.geometry();
    let want = plan.options.geometry;
    let mut differ = Vec::new();
    for (key, have, want) in [
        ("max_peers", have.max_peers, want.max_peers),
        ("ring_slots", have.ring_slots, want.ring_slots),
        ("mtu", have.mtu, want.mtu),
        ("gso_buffers", have.gso_buffers, want.gso_buffers),
    ] {
        if have != want {
            differ.push(format!("{key} is {have}, the file says {want}"));
        }
    }
    let flooding = network.status().unknown_unicast;
    let wanted = if plan.options.drop_unknown_unicast {
        "drop"
    } else {
        "flood"
    };
    if flooding != wanted {
        differ.push(format!(
            "unknown_unicast is {flooding}, the file says {wanted}"
        ));
    }
    if !differ.is_empty() {
        bail!(
            "network {} exists with another shape: {} (a key left out means its default; destroy the network or change the file)",
            plan.name,
            differ.join("; ")
        );
    }
    Ok(())
}

/// One child of the file and how it is doing.
#[derive(Debug)]
struct Supervised {
    plan: ChildPlan,
    state: State,
    restarts: Restarts,
}

#[derive(Debug)]
enum State {
    Running {
        child: Child,
        started: Instant,
        /// Set by its output reader at its first line.
        printed: Arc<AtomicBool>,
        up: bool,
    },
    Waiting {
        until: Instant,
    },
}

struct Supervisor {
    program: PathBuf,
    dir: PathBuf,
    bell: Arc<Doorbell>,
    children: Vec<Supervised>,
}

impl Supervisor {
    fn add(&mut self, plan: ChildPlan, now: Instant) {
        let mut child = Supervised {
            plan,
            state: State::Waiting { until: now },
            restarts: Restarts::default(),
        };
        self.start(&mut child, now);
        self.children.push(child);
    }

    fn start(&self, supervised: &mut Supervised, now: Instant) {
        let mut command = std::process::Command::new(&self.program);
        command
            .arg("--dir")
            .arg(&self.dir)
            .args(&supervised.plan.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("NOTIFY_SOCKET")
            // Its own group: a terminal's Ctrl-C reaches `up` alone, which stops the
            // children in order, and a stop reaches whatever the child started.
            .process_group(0);
        // And if `up` is killed outright, its children still stop (this loop runs on the
        // main thread, which lives as long as `up`).
        crate::shm::end_with_parent(&mut command);
        match command.spawn() {
            Ok(mut child) => {
                log(format_args!(
                    "started {} as pid {}",
                    supervised.plan,
                    child.id()
                ));
                let printed = Arc::new(AtomicBool::new(false));
                if let Some(stdout) = child.stdout.take() {
                    let printed = Arc::clone(&printed);
                    let bell = Arc::clone(&self.bell);
                    let name = format!(
                        "{} (line {})",
                        supervised.plan.subcommand, supervised.plan.line
                    );
                    // Ends when the child's output closes, that is when it exits.
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(stdout);
                        let mut line = Vec::new();
                        // Read to the end whatever it writes, so it never blocks on a
                        // full pipe.
                        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                            let text = String::from_utf8_lossy(&line);
                            log(format_args!("{name}: {}", text.trim_end()));
                            line.clear();
                            printed.store(true, Ordering::SeqCst);
                            bell.ring();
                        }
                    });
                }
                supervised.state = State::Running {
                    child,
                    started: now,
                    printed,
                    up: false,
                };
            }
            Err(error) => {
                let until = supervised.restarts.died(now, now);
                log(format_args!(
                    "cannot start {}: {error}; trying again in {:.1} s",
                    supervised.plan,
                    until.saturating_duration_since(now).as_secs_f64()
                ));
                supervised.state = State::Waiting { until };
            }
        }
    }

    /// Notices the children that died and schedules their restart.
    fn reap(&mut self, now: Instant) {
        for supervised in &mut self.children {
            let State::Running { child, started, .. } = &mut supervised.state else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(error) => {
                    log(format_args!("cannot wait for {}: {error}", supervised.plan));
                    continue;
                }
            };
            let until = supervised.restarts.died(*started, now);
            log(format_args!(
                "{} ended ({status}); restarting in {:.1} s",
                supervised.plan,
                until.saturating_duration_since(now).as_secs_f64()
            ));
            supervised.state = State::Waiting { until };
        }
    }

    fn start_due(&mut self, now: Instant) {
        let mut children = std::mem::take(&mut self.children);
        for supervised in &mut children {
            if matches!(supervised.state, State::Waiting { until } if until <= now) {
                self.start(supervised, now);
            }
        }
        self.children = children;
    }

    /// Marks the children that came up since; whether all are up.
    fn look_for_up(&mut self) -> bool {
        let mut all = true;
        for supervised in &mut self.children {
            match &mut supervised.state {
                State::Running {
                    child, printed, up, ..
                } => {
                    if !*up {
                        *up = printed.load(Ordering::SeqCst)
                            || owns_a_peer(
                                &self.dir,
                                supervised.plan.network.as_deref(),
                                child.id(),
                            );
                        if *up {
                            log(format_args!("{} is up", supervised.plan));
                        }
                    }
                    all &= *up;
                }
                State::Waiting { .. } => all = false,
            }
        }
        all
    }

    fn next_restart(&self) -> Option<Instant> {
        self.children
            .iter()
            .filter_map(|c| match c.state {
                State::Waiting { until } => Some(until),
                State::Running { .. } => None,
            })
            .min()
    }

    fn stop_all(&mut self) {
        stop_children(&self.bell, &mut self.children);
        self.children.clear();
    }
}

/// Whether a peer of `network` belongs to process `pid`.
fn owns_a_peer(dir: &Path, network: Option<&str>, pid: u32) -> bool {
    let Some(name) = network else { return false };
    Network::open(dir, name)
        .is_ok_and(|network| network.status().peers.iter().any(|p| p.pid == pid))
}

/// Stops the running ones among `children`: `SIGTERM` to each group, then `SIGKILL` to
/// the groups still there after [`STOP_GRACE`], and reaps them.
fn stop_children(bell: &Doorbell, children: &mut [Supervised]) {
    let signal_all = |children: &mut [Supervised], signal: rustix::process::Signal| {
        for supervised in children.iter_mut() {
            if let State::Running { child, .. } = &mut supervised.state
                && matches!(child.try_wait(), Ok(None))
                && let Some(group) = rustix::process::Pid::from_raw(child.id() as i32)
            {
                // Not reaped yet (try_wait just said so), so the group id is still ours.
                let _ = rustix::process::kill_process_group(group, signal);
            }
        }
    };
    signal_all(children, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let running = children
            .iter_mut()
            .any(|supervised| match &mut supervised.state {
                State::Running { child, .. } => matches!(child.try_wait(), Ok(None)),
                State::Waiting { .. } => false,
            });
        if !running {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            signal_all(children, rustix::process::Signal::KILL);
            break;
        }
        // SIGCHLD rings the bell; the timeout bounds the wait either way.
        bell.wait((deadline - now).min(Duration::from_millis(50)));
        bell.drain();
    }
    for supervised in children.iter_mut() {
        if let State::Running { child, .. } = &mut supervised.state {
            match child.wait() {
                Ok(status) => log(format_args!("{} stopped ({status})", supervised.plan)),
                Err(error) => log(format_args!("cannot reap {}: {error}", supervised.plan)),
            }
        }
    }
}

/// The systemd notification socket, if `up` runs under systemd with `Type=notify`.
struct Notifier {
    socket: Option<std::os::unix::net::SocketAddr>,
}

impl Notifier {
    fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            use std::os::linux::net::SocketAddrExt;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            // `@name` is a socket in the abstract namespace.
            match bytes.strip_prefix(b"@") {
                Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name).ok(),
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok(),
            }
        });
        Notifier { socket }
    }

    /// Sends one state change; a failure is logged, never fatal (systemd would then time
    /// out the start, which says more than we could).
    fn notify(&self, state: &str) {
        let Some(address) = &self.socket else { return };
        let sent = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(state.as_bytes(), address));
        if let Err(error) = sent {
            log(format_args!("cannot tell systemd {state}: {error}"));
        }
    }
}
