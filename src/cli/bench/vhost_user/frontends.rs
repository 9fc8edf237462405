//! The frontends of one test: the `dpdk-testpmd` instances, and which port of which is
//! `a` and `b`.

use std::time::Duration;

use anyhow::Context;

use super::Test;
use super::testpmd::{PortStats, Testpmd};

/// The testpmd instances of one test, and where each frontend's port is.
pub(super) struct Frontends {
    /// The first one is told to start and stop sending.
    pub(super) instances: Vec<Testpmd>,
    /// For `a` and `b`: the instance and its port number.
    pub(super) sides: [(usize, usize); 2],
    /// Queue pairs of each port.
    pub(super) queues: u16,
}

impl Frontends {
    pub(super) fn command(&mut self, instance: usize, line: &str) -> anyhow::Result<()> {
        self.instances
            .get_mut(instance)
            .context("no such frontend")?
            .command(line)?;
        Ok(())
    }

    /// Both frontends' port counters, `a` then `b`.
    pub(super) fn counts(&mut self) -> anyhow::Result<[PortStats; 2]> {
        let mut per_instance = Vec::new();
        for instance in &mut self.instances {
            per_instance.push(instance.port_stats()?);
        }
        let port = |(instance, port): (usize, usize)| {
            per_instance
                .get(instance)
                .and_then(|ports| ports.get(port))
                .copied()
                .context("testpmd shows fewer ports than it was given")
        };
        Ok([port(self.sides[0])?, port(self.sides[1])?])
    }

    /// Both frontends' counters by queue pair, `a` then `b`.
    pub(super) fn queue_counts(&mut self) -> anyhow::Result<[Vec<PortStats>; 2]> {
        let mut per_instance = Vec::new();
        for instance in &mut self.instances {
            per_instance.push(instance.queue_stats(self.queues)?);
        }
        let port = |(instance, port): (usize, usize)| {
            per_instance
                .get(instance)
                .and_then(|ports| ports.get(port))
                .cloned()
                .context("testpmd shows fewer ports than it was given")
        };
        Ok([port(self.sides[0])?, port(self.sides[1])?])
    }

    pub(super) fn pause(&mut self, length: Duration) -> anyhow::Result<()> {
        self.instances
            .first_mut()
            .context("no frontends")?
            .pause(length)
    }

    /// Stops the receive-only forwarding of the drain.
    pub(super) fn stop_receiving(&mut self, test: Test) -> anyhow::Result<()> {
        match test {
            Test::RequestResponse | Test::Latency => self.command(0, "stop"),
            Test::Stream => self.command(1, "stop"),
        }
    }

    pub(super) fn quit(self) -> anyhow::Result<()> {
        for instance in self.instances {
            instance.quit()?;
        }
        Ok(())
    }
}
