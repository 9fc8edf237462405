//! Being told to stop.
//!
//! A port serves until a [`Doorbell`] rings: a self-pipe that a signal handler, another
//! thread or a test can ring, and that a `poll` loop waits on beside its sockets, so an idle
//! port sleeps in the kernel instead of waking up to check a flag.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::wait;

/// A self-pipe: any thread, or a signal handler, rings it; a `poll` loop wakes on it.
///
/// Ringing writes one byte; the byte stays until [`drain`](Doorbell::drain), so a bell
/// used to stop a port stays rung and every loop that looks sees it.
#[derive(Debug)]
pub struct Doorbell {
    read: OwnedFd,
    write: OwnedFd,
}

impl Doorbell {
    /// A new, silent doorbell.
    pub fn new() -> io::Result<Doorbell> {
        use rustix::pipe::PipeFlags;
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Doorbell { read, write })
    }

    /// Rings the bell. Never blocks: if the pipe is full, it is rung already.
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.write, &[1]);
    }

    /// Rings the bell whenever one of `signals` arrives (for example `SIGINT`, `SIGTERM`).
    pub fn ring_on_signals(&self, signals: &[i32]) -> io::Result<()> {
        for &signal in signals {
            let write = self.write.try_clone()?;
            signal_hook::low_level::pipe::register(signal, write)?;
        }
        Ok(())
    }

    /// Whether the bell has been rung (and not drained since).
    pub fn is_rung(&self) -> bool {
        self.wait(Duration::ZERO)
    }

    /// Waits up to `timeout` for the bell; returns whether it has been rung.
    pub fn wait(&self, timeout: Duration) -> bool {
        matches!(
            wait::first_ready([(self.read.as_fd(), ())], Some(timeout)),
            Ok(Some(()))
        )
    }

    /// Silences the bell.
    pub fn drain(&self) {
        let mut buffer = [0u8; 64];
        // Bounded: the pipe holds at most its capacity, and it is non-blocking.
        while matches!(rustix::io::read(&self.read, &mut buffer), Ok(n) if n > 0) {}
    }
}

/// The end to poll for readability.
impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_stays_rung_until_drained() {
        let bell = Doorbell::new().unwrap();
        assert!(!bell.is_rung());
        bell.ring();
        bell.ring();
        assert!(bell.is_rung());
        assert!(bell.is_rung());
        bell.drain();
        assert!(!bell.is_rung());
        assert!(!bell.wait(Duration::from_millis(1)));
    }
}
