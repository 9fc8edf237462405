//! Multi-process stress: many `pktgen` processes send checksummed, numbered frames at full
//! speed into small rings while `sink` processes verify them (DESIGN §4, invariants 1–3).
//!
//! The rings are small (64 slots) so that they fill up and senders drop frames all the
//! time; the tests then check that every frame a sender put on the network is accounted
//! for on both sides, that nothing arrived damaged, twice or out of order, and hence that
//! a full ring never overwrote a frame that was still unread.

mod traffic_support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use traffic_support::{Child, Sink, network, number, start_sink, total, wait_until};

const RING_SLOTS: u32 = 64;
const FINISH: Duration = Duration::from_secs(60);

fn pktgen(dir: &std::path::Path, id: u32, count: u64, extra: &[&str]) -> Child {
    let (id, count) = (id.to_string(), count.to_string());
    let mut args = vec![
        "pktgen",
        "stress",
        "--id",
        &id,
        "--count",
        &count,
        "--size",
        "60-1514",
        "--wait-for-peer",
    ];
    args.extend_from_slice(extra);
    Child::spawn(&format!("pktgen {id}"), dir, &args)
}

/// Stops a sink after its senders finished; returns its summary. It drains its ring
/// before reporting, so every frame delivered to it is counted.
fn stop_sink(sink: &mut Sink) -> Value {
    sink.child.terminate();
    let (summary, status) = sink.child.finish(FINISH);
    assert!(status.success(), "sink failed ({status}): {summary}");
    for key in ["corrupt", "duplicates", "out_of_order", "foreign"] {
        assert_eq!(number(&summary, &[key]), 0, "{key} in {summary}");
    }
    summary
}

/// Frames of `sender` the sink received, and the ones its sequence numbers show missing
/// (before the first, in gaps, after the last), which together must be all it sent.
fn seen_and_missing(sink: &Value, sender: u32, sent: u64) -> (u64, u64) {
    let id = sender.to_string();
    let entry = &sink["per_sender"][&id];
    if entry.is_null() {
        return (0, sent);
    }
    let received = number(entry, &["received"]);
    let (first, last) = (number(entry, &["first"]), number(entry, &["last"]));
    assert!(
        last < sent,
        "sender {sender}: sequence {last} beyond {sent}"
    );
    let missing = first + number(entry, &["gaps"]) + (sent - 1 - last);
    (received, missing)
}

#[test]
fn concurrent_unicast_senders_lose_nothing_uncounted() {
    const SENDERS: u32 = 3;
    const FRAMES: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), "stress", RING_SLOTS);
    let mut sink = start_sink(dir.path(), "stress", "sink");
    let dst = sink.mac.to_string();
    let mut senders: Vec<Child> = (1..=SENDERS)
        .map(|id| pktgen(dir.path(), id, FRAMES, &["--dst", &dst]))
        .collect();
    let summaries: Vec<Value> = senders
        .iter_mut()
        .map(|p| {
            let (summary, status) = p.finish(FINISH);
            assert!(status.success(), "pktgen failed ({status}): {summary}");
            summary
        })
        .collect();
    let sink_peer = net.counters(sink.slot).expect("the sink is still up");
    let report = stop_sink(&mut sink);

    let mut sent_total = 0;
    let mut drops_total = 0;
    for p in &summaries {
        let id = number(p, &["id"]) as u32;
        let sent = number(p, &["sent"]);
        let drops = total(p, "tx_drops");
        assert_eq!(sent, FRAMES);
        assert_eq!(
            number(p, &["accepted"]),
            sent,
            "the sink's MAC is known: {p}"
        );
        // One destination per frame: each is delivered or counted as dropped.
        assert_eq!(number(p, &["tx_deliveries"]) + drops, sent, "{p}");
        // A full ring, or, on a loaded machine, a sender descheduled mid-copy for longer
        // than the receiver waits for a slot (`stalled`): both counted, nothing else.
        let only_full_ring = p["tx_drops"].as_object().is_some_and(|m| {
            m.keys()
                .all(|k| k == "ring_full" || k == "ring_busy" || k == "stalled")
        });
        assert!(only_full_ring, "unexpected drop reasons: {p}");
        // What the sink saw of this sender is exactly what the sender delivered.
        let (received, missing) = seen_and_missing(&report, id, sent);
        assert_eq!(received, number(p, &["tx_deliveries"]), "sender {id}");
        assert_eq!(
            missing, drops,
            "sender {id}: lost frames equal counted drops"
        );
        sent_total += sent;
        drops_total += drops;
    }
    // The receiver's side of the same accounting.
    let received = number(&report, &["received"]);
    let rx_drops = total(&report, "rx_drops");
    assert_eq!(received + rx_drops, sent_total, "sink: {report}");
    assert_eq!(rx_drops, drops_total, "both sides count the same drops");
    assert_eq!(sink_peer.rx_dropped_total(), drops_total);
    assert!(
        number(&report, &["rx_drops", "ring_full"]) > 0,
        "the ring never filled, so the test proved nothing about full rings: {report}"
    );
}

#[test]
fn concurrent_broadcast_reaches_both_sinks_or_is_counted() {
    const SENDERS: u32 = 2;
    const FRAMES: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), "stress", RING_SLOTS);
    // The senders join first and mark their links down, so the broadcast copies each
    // sends land only in the sinks (copies to the other sender are counted link_down);
    // they start sending once both sinks are up.
    let mut senders: Vec<Child> = (1..=SENDERS)
        .map(|id| {
            pktgen(
                dir.path(),
                id,
                FRAMES,
                &["--dst", "broadcast", "--no-receive", "--receivers", "2"],
            )
        })
        .collect();
    wait_until("both senders joined with their link down", FINISH, || {
        net.status().peers.iter().filter(|p| p.link_down).count() == SENDERS as usize
    });
    let mut sinks = [
        start_sink(dir.path(), "stress", "sink a"),
        start_sink(dir.path(), "stress", "sink b"),
    ];
    let summaries: Vec<Value> = senders
        .iter_mut()
        .map(|p| {
            let (summary, status) = p.finish(FINISH);
            assert!(status.success(), "pktgen failed ({status}): {summary}");
            summary
        })
        .collect();
    let reports: Vec<Value> = sinks.iter_mut().map(stop_sink).collect();

    let mut sent_total = 0;
    let mut drops_into_sinks = 0;
    for p in &summaries {
        let id = number(p, &["id"]) as u32;
        let sent = number(p, &["sent"]);
        assert_eq!(number(p, &["accepted"]), sent, "{p}");
        // Copies addressed to the other sender are dropped as link_down, or as peer_gone
        // once it has left while this one's view of the table still held it; the sinks
        // stay up throughout, so every other drop is a copy meant for a sink.
        let to_other_sender =
            number(p, &["tx_drops", "link_down"]) + number(p, &["tx_drops", "peer_gone"]);
        let drops = total(p, "tx_drops") - to_other_sender;
        // Every frame has both sinks as destinations.
        assert_eq!(number(p, &["tx_deliveries"]) + drops, 2 * sent, "{p}");
        let mut received_by_sinks = 0;
        let mut missing_at_sinks = 0;
        for report in &reports {
            let (received, missing) = seen_and_missing(report, id, sent);
            assert_eq!(received + missing, sent, "sender {id}: {report}");
            received_by_sinks += received;
            missing_at_sinks += missing;
        }
        assert_eq!(received_by_sinks, number(p, &["tx_deliveries"]));
        assert_eq!(missing_at_sinks, drops, "sender {id}");
        sent_total += sent;
        drops_into_sinks += drops;
    }
    let mut rx_drops_total = 0;
    for report in &reports {
        let rx_drops = total(report, "rx_drops");
        assert_eq!(
            number(report, &["received"]) + rx_drops,
            sent_total,
            "every frame was meant for every sink: {report}"
        );
        rx_drops_total += rx_drops;
    }
    assert_eq!(rx_drops_total, drops_into_sinks);
    let reasons: BTreeMap<String, u64> = reports
        .iter()
        .flat_map(|r| r["rx_drops"].as_object().cloned().unwrap_or_default())
        .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
        .collect();
    // `stalled`: a sender descheduled mid-copy on a loaded machine, passed over, counted.
    assert!(
        reasons
            .keys()
            .all(|k| k == "ring_full" || k == "ring_busy" || k == "stalled"),
        "{reasons:?}"
    );
}
