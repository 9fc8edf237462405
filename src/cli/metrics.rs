//! `metrics`: serve every network of the directory to Prometheus, at `GET /metrics`.
//!
//! Each scrape opens the networks anew (so one created or destroyed since shows, or goes),
//! reads their [`status`](Network::status) and their ports' status files, and answers the
//! text that [`render::render`] makes of them. Reading never blocks the data path: the
//! counters are atomics read without a lock. `status()` does first sweep for dead peers,
//! which takes the network's control lock for a moment, as `guestnet status` does;
//! senders and receivers never take that lock, only joining and leaving peers wait on it.
//!
//! The HTTP side is the least that Prometheus needs, on a plain [`TcpListener`]: one
//! request per connection, answered and closed, one connection at a time. A client gets
//! [`REQUEST_DEADLINE`] to send its request head, at most [`MAX_REQUEST_BYTES`] of it,
//! and as long again to take the answer, so a slow or hostile client holds the server no
//! longer than that.

pub mod render;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::port_status::PortStatuses;
use crate::network::Network;
use crate::ports::socket::Doorbell;
use crate::ports::wait::first_ready;
use render::{NetworkMetrics, render};

/// Where `metrics` listens unless told: the loopback, on the port this exporter uses.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";

/// How long a client has to send its request head, and again to take the answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// The most of a request head read; a longer one is refused. A scraper's is a few hundred
/// bytes.
pub const MAX_REQUEST_BYTES: usize = 8192;

/// How long the server pauses after a failed `accept` before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Arguments of `metrics`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Serves the counters of every network in --dir, and of their vhost-user and VXLAN ports,
in the Prometheus text format at /metrics; prints `listening on ADDR` once bound (with
port 0, the port the system chose). Example:
  guestnet metrics --listen 127.0.0.1:9469
  curl -s http://127.0.0.1:9469/metrics | grep guestnet_peer_rx_packets_total")]
pub struct MetricsArgs {
    /// Address and port to serve on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

/// Runs `metrics` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: MetricsArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listen on {}", args.listen))?;
    let address = listener.local_addr().context("read the bound address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {address}")?;
        stdout.flush()?;
    }
    serve(dir, &listener, &stop)
}

/// What woke the server.
#[derive(Debug, Clone, Copy)]
enum Event {
    Stop,
    Connection,
}

/// Answers connections on `listener` one at a time until `stop` rings.
pub fn serve(dir: &Path, listener: &TcpListener, stop: &Doorbell) -> anyhow::Result<()> {
    loop {
        let sources = [
            (stop.as_fd(), Event::Stop),
            (listener.as_fd(), Event::Connection),
        ];
        match first_ready(sources, None).context("wait for a connection")? {
            Some(Event::Stop) => return Ok(()),
            Some(Event::Connection) | None => {}
        }
        match listener.accept() {
            Ok((stream, client)) => {
                // One client's trouble is its own: logged, and the next one is served.
                if let Err(error) = answer(dir, stream) {
                    tracing::debug!(%client, "metrics request failed: {error:#}");
                }
            }
            Err(error) => {
                tracing::warn!("accept a metrics connection: {error}");
                // Out of descriptors, say: the listener stays readable, so pause rather
                // than spin, yet still stop at once when told.
                stop.wait(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Reads one request from `stream` and answers it.
fn answer(dir: &Path, mut stream: TcpStream) -> anyhow::Result<()> {
    let response = match read_request_head(&mut stream)? {
        Some(head) => respond(dir, &head),
        None => Response::new("400 Bad Request", "request head too long or malformed\n"),
    };
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    stream.write_all(&response.to_bytes())?;
    stream.flush()?;
    discard_unread(&mut stream);
    Ok(())
}

/// Reads away what the client sent beyond its request head, as far as it has arrived: a
/// socket closed with unread input resets the connection, and the client may then lose
/// the answer before reading it. Bounded, and without waiting, so a client that keeps
/// sending cannot keep the server.
fn discard_unread(stream: &mut TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut buffer = [0u8; 4096];
    let mut discarded = 0;
    while discarded < 16 * MAX_REQUEST_BYTES {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

/// Reads the request head (up to the blank line), within [`REQUEST_DEADLINE`] all told
/// and [`MAX_REQUEST_BYTES`]. `None` when it is longer than that or the client closes
/// before finishing it.
fn read_request_head(stream: &mut TcpStream) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Ok(None);
        }
        // A deadline for the whole head, not for each read: a client trickling a byte
        // at a time must not keep the server for long.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("the client took longer than {REQUEST_DEADLINE:?} to send its request");
        }
        stream.set_read_timeout(Some(left))?;
        let room = (MAX_REQUEST_BYTES - head.len()).min(buffer.len());
        let n = stream
            .read(&mut buffer[..room])
            .context("read the request")?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..n]);
    }
}

/// Where the request head ends (before its blank line), if it has.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Tolerated: bare line feeds, as some hand-typed clients send.
        bytes.windows(2).position(|w| w == b"\n\n")
    })
}

/// An HTTP response, written whole and followed by closing the connection.
#[derive(Debug)]
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// The answer to a request head: the metrics for `GET /metrics` (with any query), 404
/// for anything else.
fn respond(dir: &Path, head: &str) -> Response {
    let request_line = head.lines().next().unwrap_or("");
    let mut words = request_line.split_ascii_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|target| target.split('?').next().unwrap_or(target));
    if method == Some("GET") && path == Some("/metrics") {
        Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: scrape(dir),
        }
    } else {
        Response::new(
            "404 Not Found",
            "not found: the metrics are at GET /metrics\n",
        )
    }
}

/// Reads every network in `dir` and renders them.
pub fn scrape(dir: &Path) -> String {
    let names = match Network::list(dir) {
        Ok(names) => names,
        Err(error) => {
            // No directory yet is no network yet, not a failed scrape.
            tracing::debug!("list the networks in {}: {error}", dir.display());
            Vec::new()
        }
    };
    let mut networks = Vec::new();
    let mut unopened = Vec::new();
    for name in names {
        match Network::open(dir, &name) {
            Ok(network) => networks.push(NetworkMetrics {
                status: network.status(),
                ports: PortStatuses::read(dir, &name),
            }),
            Err(error) => {
                tracing::debug!("open network {name:?} for metrics: {error}");
                unopened.push(name);
            }
        }
    }
    render(&networks, &unopened)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` to a fresh server on a private directory and returns its answer.
    fn exchange(request: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(request).unwrap();
        let (stream, _) = listener.accept().unwrap();
        answer(dir.path(), stream).unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn get_metrics_is_answered_in_the_text_format() {
        let response = exchange(b"GET /metrics?x=1 HTTP/1.1\r\nHost: here\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        // No network in the directory: nothing to say, and said with a length of 0.
        assert!(response.ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn anything_else_is_not_found() {
        for request in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metricsx HTTP/1.0\n\n",
        ] {
            let response = exchange(request);
            assert!(
                response.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{response}"
            );
        }
    }

    #[test]
    fn an_endless_request_head_is_cut_off() {
        let mut request = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        request.resize(MAX_REQUEST_BYTES * 2, b'a');
        let response = exchange(&request);
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
    }

    #[test]
    fn a_client_that_never_finishes_its_request_is_let_go() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        assert!(read_request_head(&mut stream).is_err());
        let waited = started.elapsed();
        assert!(
            waited >= REQUEST_DEADLINE && waited < REQUEST_DEADLINE * 3,
            "{waited:?}"
        );
    }
}
