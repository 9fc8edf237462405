//! QEMU guests, for `guestnet bench --vm` and for the QEMU tests (`tests/qemu.rs`): the
//! guest image, the accelerator, QEMU's command line and the guest's serial console.
//!
//! The guest is the tiny Linux of `scripts/guest-image`: Debian's cloud kernel and an
//! initramfs whose `/init` loads virtio-net and 802.1Q, puts the address of `guestnet.ip=`
//! on eth0 (or asks DHCP for one), adds the VLAN sub-interfaces of `guestnet.vlan=`,
//! runs the command of `guestnet.run="…"`, prints `GUESTNET-DONE rc=N` ([`DONE_MARKER`]),
//! and powers off — or, with `guestnet.hold`, prints `GUESTNET-HOLD` ([`HOLD_MARKER`]) and
//! waits for a line on its console first. Its console is QEMU's stdout.
//!
//! Guests run under KVM where a guest actually boots under it and under TCG (software
//! emulation) otherwise: a usable-looking `/dev/kvm` can still hang a guest or make QEMU
//! abort, as under some nested hypervisors, so [`Accelerator::probe`] boots one to see.
//! `GUESTNET_ACCEL=kvm|tcg` skips the probe.
//!
//! Every guest's memory is a shared memfd: a vhost-user backend maps it, and guests on
//! other network devices get the same memory so that they differ only in the network.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::child::{Children, Tracked};

/// QEMU's binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// Memory of each guest, in MiB.
pub const GUEST_MEMORY_MIB: u32 = 256;
/// What the guest prints once its command has finished, followed by the exit status.
pub const DONE_MARKER: &str = "GUESTNET-DONE rc=";
/// What a guest booted with `hold` prints when it starts to wait for a line.
pub const HOLD_MARKER: &str = "GUESTNET-HOLD";
/// What a guest prints when DHCP gave it an address: `GUESTNET-LEASE ADDR/LEN router R
/// dns D domain N` (`none` for what the server did not give).
pub const LEASE_MARKER: &str = "GUESTNET-LEASE ";
/// [`Boot::address`] that makes the guest ask DHCP for its address.
pub const DHCP: &str = "dhcp";
/// How long a guest under KVM may take to boot and run `true` when no guest under TCG
/// finished first: far longer than a working KVM needs, far shorter than waiting for a
/// hung guest would be.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the probe looks at the TCG guest while it waits for the KVM one.
const PROBE_SLICE: Duration = Duration::from_millis(50);
/// Console lines quoted in an error.
const TRANSCRIPT_TAIL: usize = 30;

/// The guest's kernel and initramfs, as `scripts/guest-image` writes them.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel, `vmlinuz`.
    pub kernel: PathBuf,
    /// The initramfs, `initramfs.cpio.gz`.
    pub initrd: PathBuf,
}

impl GuestImage {
    /// The image's files in `dir`, whether or not they are there.
    pub fn in_dir(dir: &Path) -> GuestImage {
        GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
        }
    }

    /// Whether both files are there.
    pub fn is_present(&self) -> bool {
        self.kernel.is_file() && self.initrd.is_file()
    }

    /// Builds the image in `dir` with `script` (`scripts/guest-image`), which returns at
    /// once when the image is current; it may install packages, and then needs root.
    pub fn build(script: &Path, dir: &Path) -> anyhow::Result<GuestImage> {
        let image = GuestImage::in_dir(dir);
        let output = Command::new(script)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !(output.status.success() && image.is_present()) {
            bail!(
                "{} {} failed ({}):\n{}",
                script.display(),
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok(image)
    }

    /// `scripts/guest-image` of a source tree: the working directory's, or else the one
    /// this program was built from; `None` away from a source tree.
    pub fn script() -> Option<PathBuf> {
        [
            PathBuf::from("scripts/guest-image"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-image"),
        ]
        .into_iter()
        .find(|script| script.is_file())
    }
}

/// Which accelerator the guests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// The host's virtualisation: fast, where it works.
    Kvm,
    /// QEMU's software emulation: a boot takes a few seconds, and guests' CPUs are slow.
    Tcg,
}

impl Accelerator {
    /// QEMU's name for it (`-accel NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }

    /// KVM if a guest boots under it, else TCG, or what `GUESTNET_ACCEL` says; and why.
    pub fn choose(
        image: &GuestImage,
        children: &Children,
    ) -> anyhow::Result<(Accelerator, String)> {
        match Accelerator::without_probe() {
            Some(choice) => Ok(choice),
            None => Accelerator::probe(image, children),
        }
    }

    /// The accelerator when no probe is needed, and why: what `GUESTNET_ACCEL=kvm|tcg`
    /// says (a person who knows may skip the probe), or TCG when `/dev/kvm` cannot be
    /// opened. `None`: only [`Accelerator::probe`] can tell.
    pub fn without_probe() -> Option<(Accelerator, String)> {
        match std::env::var("GUESTNET_ACCEL").as_deref() {
            Ok("kvm") => return Some((Accelerator::Kvm, "GUESTNET_ACCEL=kvm".to_string())),
            Ok("tcg") => return Some((Accelerator::Tcg, "GUESTNET_ACCEL=tcg".to_string())),
            _ => {}
        }
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(_) => None,
            Err(e) => Some((Accelerator::Tcg, format!("/dev/kvm cannot be opened ({e})"))),
        }
    }

    /// Boots a guest that only runs `true` under KVM, and one under TCG beside it: KVM if
    /// its guest finishes first, TCG if KVM fails, hangs or is slower than emulation (then
    /// nothing is lost by emulating); and why. A working KVM boots in about a second; a
    /// hung one is known once the TCG guest is done (a few seconds), or at the latest
    /// after `KVM_PROBE_TIMEOUT` (10 s).
    pub fn probe(image: &GuestImage, children: &Children) -> anyhow::Result<(Accelerator, String)> {
        let mut kvm = probe_guest(image, Accelerator::Kvm, children)?;
        // Without a TCG guest to compare with, KVM gets the whole timeout.
        let mut tcg = probe_guest(image, Accelerator::Tcg, children).ok();
        children.check()?;
        let started = Instant::now();
        let deadline = started + KVM_PROBE_TIMEOUT;
        while Instant::now() < deadline {
            let slice = (Instant::now() + PROBE_SLICE).min(deadline);
            match kvm.expect_by(DONE_MARKER, slice) {
                Ok(Some(line)) if done_status(&line) == Some(0) => {
                    return Ok((Accelerator::Kvm, "a guest booted under KVM".to_string()));
                }
                Ok(Some(line)) => {
                    return Ok((
                        Accelerator::Tcg,
                        format!("a guest under KVM ended badly ({line:?})"),
                    ));
                }
                Ok(None) => {}
                Err(_) => {
                    children.check()?;
                    let said = kvm.transcript.last().map_or("no message", String::as_str);
                    return Ok((Accelerator::Tcg, format!("QEMU failed under KVM: {said}")));
                }
            }
            // Only a look at what the TCG guest printed meanwhile: the wait is KVM's.
            let Some(emulated) = &mut tcg else {
                continue;
            };
            match emulated.expect_by(DONE_MARKER, Instant::now()) {
                Ok(Some(line)) if done_status(&line) == Some(0) => {
                    return Ok((
                        Accelerator::Tcg,
                        format!(
                            "a guest under KVM had not booted when one under TCG had, after \
                             {:.1} s",
                            started.elapsed().as_secs_f64()
                        ),
                    ));
                }
                Ok(None) => {}
                // The TCG guest failed: no comparison, KVM gets the whole timeout.
                Ok(Some(_)) | Err(_) => {
                    children.check()?;
                    tcg = None;
                }
            }
        }
        Ok((
            Accelerator::Tcg,
            format!("a guest under KVM did not boot within {KVM_PROBE_TIMEOUT:?}"),
        ))
    }
}

/// A probe guest under `accelerator` that runs `true`, with a NIC on a hub of its own
/// (the guest's /init waits for eth0, and nothing else).
fn probe_guest(
    image: &GuestImage,
    accelerator: Accelerator,
    children: &Children,
) -> anyhow::Result<Console> {
    let boot = Boot {
        run: "true",
        ..Boot::default()
    };
    let mut command = qemu_command(image, accelerator, &boot);
    command.args([
        "-netdev",
        "hubport,id=n0,hubid=0",
        "-device",
        "virtio-net-pci,netdev=n0",
    ]);
    let name = format!("{} probe guest", accelerator.name().to_uppercase());
    Console::spawn(command, &name, Stderr::Capture, children)
}

/// What a guest does, as its `/init` reads it from the kernel command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Boot<'a> {
    /// The command to run (`guestnet.run`), a shell line without double quotes; `reach
    /// [-I IFACE] ADDR` waits until ADDR answers a ping.
    pub run: &'a str,
    /// eth0's address, in CIDR notation (`guestnet.ip`), or [`DHCP`]: busybox udhcpc asks
    /// for one, sending [`Boot::hostname`], and the guest prints [`LEASE_MARKER`].
    pub address: Option<&'a str>,
    /// The guest's host name (`guestnet.hostname`), sent in its DHCP requests (option 12).
    pub hostname: Option<&'a str>,
    /// 802.1Q sub-interfaces `eth0.VID`, each with its address in CIDR notation
    /// (`guestnet.vlan=VID:CIDR,…`).
    pub vlans: &'a [(u16, &'a str)],
    /// Stay up after the command until a line arrives on the console (`guestnet.hold`).
    pub hold: bool,
}

/// QEMU with `image` doing what `boot` says: its console on stdout, no reboot, its memory
/// shared. The network device is the caller's to add.
pub fn qemu_command(image: &GuestImage, accelerator: Accelerator, boot: &Boot) -> Command {
    let mut append = "console=ttyS0 quiet panic=-1".to_string();
    if let Some(address) = boot.address {
        append.push_str(&format!(" guestnet.ip={address}"));
    }
    if let Some(hostname) = boot.hostname {
        append.push_str(&format!(" guestnet.hostname={hostname}"));
    }
    if !boot.vlans.is_empty() {
        let vlans: Vec<String> = boot
            .vlans
            .iter()
            .map(|(vid, address)| format!("{vid}:{address}"))
            .collect();
        append.push_str(&format!(" guestnet.vlan={}", vlans.join(",")));
    }
    append.push_str(&format!(" guestnet.run=\"{}\"", boot.run));
    if boot.hold {
        append.push_str(" guestnet.hold");
    }
    let memory = format!("{GUEST_MEMORY_MIB}M");
    let mut command = Command::new(QEMU);
    command
        .args(["-accel", accelerator.name()])
        .args(match accelerator {
            // The host's CPU model: what a KVM user runs, and no feature QEMU must emulate.
            Accelerator::Kvm => ["-cpu", "host"].as_slice(),
            Accelerator::Tcg => [].as_slice(),
        })
        .args(["-m", &memory, "-nographic", "-no-reboot"])
        // A vhost-user backend maps the guest's memory, so it must be shared.
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
            "-machine",
            "memory-backend=mem",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", &append]);
    command
}

/// `GUESTNET-DONE rc=N` → N.
pub fn done_status(line: &str) -> Option<i32> {
    line.rsplit("rc=").next()?.trim().parse().ok()
}

/// Where a [`Console`]'s child writes its stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Into the console's lines: QEMU's errors belong beside the guest's console.
    Capture,
    /// To our own stderr (a port's or backend's log).
    Inherit,
}

/// A child whose output arrives line by line (a guest's serial console and QEMU's
/// messages, or a port's stdout), with its stdin to type on; killed and reaped when
/// dropped.
#[derive(Debug)]
pub struct Console {
    name: String,
    process: Tracked,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every line so far, for the results and for error messages.
    transcript: Vec<String>,
    children: Children,
}

impl Console {
    /// Starts `command` as a child of `children`; `name` says what it is in errors ("the
    /// NAME printed no …").
    pub fn spawn(
        mut command: Command,
        name: &str,
        stderr: Stderr,
        children: &Children,
    ) -> anyhow::Result<Console> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match stderr {
                Stderr::Capture => Stdio::piped(),
                Stderr::Inherit => Stdio::inherit(),
            });
        let mut process = Tracked::spawn(&mut command, &format!("the {name}"), children)?;
        let (sender, lines) = mpsc::channel();
        if let Some(stdout) = process.child().stdout.take() {
            forward_lines(stdout, sender.clone());
        }
        if let Some(stderr) = process.child().stderr.take() {
            forward_lines(stderr, sender);
        }
        Ok(Console {
            name: name.to_string(),
            stdin: process.child().stdin.take(),
            process,
            lines,
            transcript: Vec::new(),
            children: children.clone(),
        })
    }

    /// Reads lines until one contains `marker`, and returns it; fails if none came by
    /// `by`, if the child exited first, or if its group was interrupted.
    pub fn expect(&mut self, marker: &str, by: Instant) -> anyhow::Result<String> {
        self.read_until(Some(marker), by)?
            .ok_or_else(|| self.not_in_time(&format!("{marker:?}")))
    }

    /// Reads lines until one contains `marker`, and returns it, or `None` if none came by
    /// `by`; fails if the child exited first, or if its group was interrupted.
    pub fn expect_by(&mut self, marker: &str, by: Instant) -> anyhow::Result<Option<String>> {
        self.read_until(Some(marker), by)
    }

    /// The next line, whatever it says, if it comes by `by`.
    pub fn next_line(&mut self, by: Instant) -> anyhow::Result<String> {
        self.read_until(None, by)?
            .ok_or_else(|| self.not_in_time("line"))
    }

    /// Reads lines until one contains `marker` (any line, without one), and returns it, or
    /// `None` if none came by `by`; fails if the child exited first, or if its group was
    /// interrupted.
    fn read_until(&mut self, marker: Option<&str>, by: Instant) -> anyhow::Result<Option<String>> {
        loop {
            let result = self
                .lines
                .recv_timeout(by.saturating_duration_since(Instant::now()));
            self.children.check()?;
            match result {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if marker.is_none_or(|marker| line.contains(marker)) {
                        return Ok(Some(line));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let wanted = marker.map_or_else(|| "line".to_string(), |m| format!("{m:?}"));
                    let status = self.process.reap().ok();
                    bail!(
                        "the {} exited ({}) before printing {wanted}; its output:\n{}",
                        self.name,
                        status.map_or_else(|| "status unknown".to_string(), |s| s.to_string()),
                        self.tail()
                    )
                }
            }
        }
    }

    /// The error of a wait for `wanted` that ended at its deadline.
    fn not_in_time(&self, wanted: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "the {} printed no {wanted} in time; its output:\n{}",
            self.name,
            self.tail()
        )
    }

    /// Types an empty line on the console (what a guest's `read`, or a holding guest,
    /// waits for).
    pub fn press_enter(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the console has no input")?;
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("type on the {}'s console", self.name))
    }

    /// Every line read so far.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    /// The last lines of the transcript.
    pub fn tail(&self) -> String {
        if self.transcript.is_empty() {
            return "(nothing)".to_string();
        }
        let skip = self.transcript.len().saturating_sub(TRANSCRIPT_TAIL);
        self.transcript[skip..].join("\n")
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Whether the child has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.process.child().try_wait(), Ok(None))
    }

    /// Waits until the child closes its output and exits (keeping what it prints until
    /// then), and returns how it ended.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let by = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(by.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.transcript.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("the {} did not exit within {timeout:?}", self.name)
                }
            }
        }
        self.process
            .reap()
            .with_context(|| format!("wait for the {}", self.name))
    }

    /// Asks the child to end (SIGTERM), waits until it has, and checks that it succeeded.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.id() as i32) {
            // Still ours: it is in its group and not reaped.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let status = self.wait_for_exit(timeout).context("after SIGTERM")?;
        if !status.success() {
            bail!("the {} ended with {status}", self.name);
        }
        Ok(())
    }
}

/// Sends each line of `output` to `lines` from a thread of its own, bytes that are not
/// UTF-8 replaced (a console may print anything), line ends and carriage returns trimmed.
fn forward_lines(output: impl Read + Send + 'static, lines: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(output);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer).trim_end().to_string();
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, children: &Children) -> Console {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Console::spawn(command, "shell", Stderr::Capture, children).expect("start sh")
    }

    /// The probe's way of waiting: a line not come yet is no error while the child runs,
    /// and a child that ended says so at once, not at the deadline.
    #[test]
    fn expect_by_tells_a_line_not_come_yet_from_a_child_that_ended() {
        let children = Children::default();
        let mut running = shell("echo one; exec sleep 60", &children);
        let soon = Instant::now() + Duration::from_secs(10);
        let one = running.expect_by("one", soon).expect("it runs");
        assert_eq!(one.as_deref(), Some("one"));
        let missing = running.expect_by("two", Instant::now() + Duration::from_millis(20));
        assert_eq!(missing.expect("it still runs"), None);
        assert!(!running.has_exited());

        let mut ended = shell("echo one", &children);
        let deadline = Instant::now() + Duration::from_secs(30);
        let error = ended.expect_by("two", deadline).expect_err("it ended");
        assert!(format!("{error:#}").contains("exited"), "{error:#}");
    }

    #[test]
    fn done_marker_gives_the_exit_status() {
        assert_eq!(done_status("GUESTNET-DONE rc=0"), Some(0));
        assert_eq!(done_status("GUESTNET-DONE rc=127\r"), Some(127));
        assert_eq!(done_status("GUESTNET-DONE"), None);
    }

    #[test]
    fn the_kernel_command_line_carries_address_command_and_hold() {
        let image = GuestImage::in_dir(Path::new("/images"));
        let boot = Boot {
            run: "reach 10.0.0.1",
            address: Some("10.0.0.2/24"),
            hold: true,
            ..Boot::default()
        };
        let command = qemu_command(&image, Accelerator::Tcg, &boot);
        let args: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let append = args
            .iter()
            .skip_while(|arg| *arg != "-append")
            .nth(1)
            .expect("an -append argument");
        assert_eq!(
            append,
            "console=ttyS0 quiet panic=-1 guestnet.ip=10.0.0.2/24 guestnet.run=\"reach 10.0.0.1\" guestnet.hold"
        );
        assert!(args.contains(&"/images/vmlinuz".to_string()), "{args:?}");
        assert!(
            !args.contains(&"host".to_string()),
            "TCG takes no -cpu host"
        );
    }

    #[test]
    fn the_kernel_command_line_carries_dhcp_host_name_and_vlans() {
        let image = GuestImage::in_dir(Path::new("/images"));
        let boot = Boot {
            run: "true",
            address: Some(DHCP),
            hostname: Some("vm1"),
            vlans: &[(10, "10.90.0.1/24"), (20, "10.90.0.2/24")],
            hold: false,
        };
        let command = qemu_command(&image, Accelerator::Tcg, &boot);
        let append = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .skip_while(|arg| arg != "-append")
            .nth(1)
            .expect("an -append argument");
        assert_eq!(
            append,
            "console=ttyS0 quiet panic=-1 guestnet.ip=dhcp guestnet.hostname=vm1 \
             guestnet.vlan=10:10.90.0.1/24,20:10.90.0.2/24 guestnet.run=\"true\""
        );
    }
}
