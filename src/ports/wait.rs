//! Sleeping until a port has something to do.
//!
//! A port thread with nothing to do sleeps in `poll` on its sources (a socket, a device, a
//! link monitor) and on the doorbells that tell it to stop, so that an idle port costs
//! nothing and still stops at once. [`first_ready`] is that sleep, written once: it retries
//! a poll a signal interrupted (for what is left of the timeout), and it answers with the
//! caller's own name for the source that woke it, so each loop reads as a match over its
//! own small event enum. How a port sleeps is decided here and nowhere else.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::network::timespec;

/// Sleeps until one of `sources` is readable (or hung up, or failed), or until `timeout`
/// has passed (`None`: no limit). Answers the name of the first ready source in the order
/// given, so a source listed earlier wins when several are ready at once (list the stop
/// doorbell first), or `None` if the time ran out.
pub(crate) fn first_ready<Source: Copy, const N: usize>(
    sources: [(BorrowedFd<'_>, Source); N],
    timeout: Option<Duration>,
) -> io::Result<Option<Source>> {
    // The deadline is only needed if a signal interrupts a sleep that has a limit; a
    // zero timeout never sleeps, so it is not worth reading the clock for.
    let deadline = timeout
        .filter(|limit| !limit.is_zero())
        .and_then(|limit| Instant::now().checked_add(limit));
    let mut left = timeout;
    loop {
        let mut fds = sources.map(|(fd, _)| PollFd::from_borrowed_fd(fd, PollFlags::IN));
        match rustix::event::poll(&mut fds, left.map(timespec).as_ref()) {
            Ok(0) if left.is_some() => return Ok(None),
            Ok(_) => {
                let ready = fds
                    .iter()
                    .zip(&sources)
                    .find_map(|(fd, &(_, source))| (!fd.revents().is_empty()).then_some(source));
                if ready.is_some() {
                    return Ok(ready);
                }
            }
            Err(rustix::io::Errno::INTR) => {
                if let Some(deadline) = deadline {
                    left = Some(deadline.saturating_duration_since(Instant::now()));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Source {
        Stop,
        Work,
    }

    #[test]
    fn the_first_ready_source_listed_wins() {
        // A socket pair is readable at one end once the other has written: a bell without
        // depending on the doorbell, which waits through this module.
        let (mut ring_stop, stop) = UnixStream::pair().unwrap();
        let (mut ring_work, work) = UnixStream::pair().unwrap();
        let sources = || [(stop.as_fd(), Source::Stop), (work.as_fd(), Source::Work)];
        assert_eq!(first_ready(sources(), Some(Duration::ZERO)).unwrap(), None);
        assert_eq!(
            first_ready(sources(), Some(Duration::from_millis(1))).unwrap(),
            None
        );
        ring_work.write_all(&[1]).unwrap();
        assert_eq!(first_ready(sources(), None).unwrap(), Some(Source::Work));
        ring_stop.write_all(&[1]).unwrap();
        assert_eq!(first_ready(sources(), None).unwrap(), Some(Source::Stop));
    }

    #[test]
    fn timespec_keeps_seconds_and_nanoseconds() {
        let t = timespec(Duration::new(3, 250));
        assert_eq!((t.tv_sec, t.tv_nsec), (3, 250));
        assert_eq!(timespec(Duration::MAX).tv_sec, i64::MAX);
    }
}
