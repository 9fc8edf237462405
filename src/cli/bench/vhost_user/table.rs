//! The table `bench --vhost-user` prints (its `--json` is the result's serialisation).

use super::*;

pub(super) fn print_table(result: &VhostUserResult, command: &str) {
    println!(
        "guestnet bench --vhost-user: DPDK virtio-user frontends a ↔ b through a vhost-user \
         switch, {}-byte frames, {} s per test",
        result.frame_size, result.seconds
    );
    println!("machine:   {}", result.machine);
    println!(
        "CPUs:      switch on {} (--switch-cores {}), frontends on {}",
        list(&result.switch_cpus),
        result.switch_cores,
        list(&result.frontend_cpus)
    );
    println!(
        "memory:    {}",
        match result.memory {
            Memory::HugePages => "2 MiB huge pages",
            Memory::NoHugePages => "ordinary pages (--no-huge): DPDK runs slower",
        }
    );
    println!(
        "guestnet:  guestnet vhost-user, one network ({} ring slots per peer)",
        result.ring_slots
    );
    println!("anchor:    {}", result.anchor_name);
    if result.queues > 1 {
        println!(
            "queues:    {} queue pairs per frontend and socket; each test also with 1; \
             guestnet's steering: by {1} (--steering {1})",
            result.queues,
            result.steering.name()
        );
    }
    println!("command:   {command}");
    let stream_skipped = result.stream_skipped.as_deref().unwrap_or("");
    if let Some(one) = &result.one_queue_pair {
        print_tests(one, " with 1 queue pair", stream_skipped);
    }
    let several = Tests {
        queues: result.queues,
        request_response: result.request_response.clone(),
        stream: result.stream.clone(),
    };
    let suffix = if result.queues > 1 {
        format!(" with {} queue pairs", result.queues)
    } else {
        String::new()
    };
    print_tests(&several, &suffix, stream_skipped);
    if let Some(latency) = &result.latency {
        print_latency(latency);
    }
    if let Some(scaling) = &result.queue_scaling {
        println!();
        println!(
            "{} queue pairs ÷ 1 (frames per second; 1.00: the second pair costs nothing)",
            result.queues
        );
        let tests = [
            ("request/response", Some(&scaling.request_response)),
            ("stream", scaling.stream.as_ref()),
        ];
        for (name, ratios) in tests {
            if let Some(r) = ratios {
                println!(
                    "{name:<17} guestnet {:.2} ×, anchor {:.2} ×",
                    r.guestnet, r.anchor
                );
            }
        }
    }
}

/// Prints the latency test: the loop's rates and the round trips they give.
fn print_latency(latency: &Comparison) {
    println!();
    println!(
        "latency ({} frames in flight: one from each port, 1 queue pair)",
        latency.frames_in_flight.unwrap_or(LATENCY_IN_FLIGHT)
    );
    println!(
        "{:<9} {:>8} {:>16} {:>10}",
        "", "Mpps", "round trip (µs)", "switch CPU"
    );
    for (name, m) in [("guestnet", &latency.guestnet), ("anchor", &latency.anchor)] {
        let round_trip = m
            .round_trip_us
            .map_or_else(|| "-".to_string(), |us| format!("{us:.2}"));
        println!(
            "{name:<9} {:>8.3} {round_trip:>16} {:>9.0} %",
            m.mpps,
            100.0 * m.switch_cpu
        );
    }
    if let Some(round_trip) = latency.round_trip_ratio {
        println!(
            "ratio     {round_trip:.2} × anchor's round trip (target ≤ 1.2 ×: {})",
            if round_trip <= 1.2 { "met" } else { "MISSED" }
        );
    }
}

/// Prints both tests of one number of queue pairs; `suffix` ends their titles.
fn print_tests(tests: &Tests, suffix: &str, stream_skipped: &str) {
    let in_flight = tests.request_response.frames_in_flight.unwrap_or(2 * BURST);
    let tests = [
        (
            format!("request/response ({in_flight} frames in flight, macswap loop){suffix}"),
            Some(&tests.request_response),
        ),
        (
            format!("stream (txonly a → rxonly b){suffix}"),
            tests.stream.as_ref(),
        ),
    ];
    for (title, comparison) in tests {
        println!();
        let Some(comparison) = comparison else {
            println!("{title}: skipped, {stream_skipped}");
            continue;
        };
        println!("{title}");
        println!(
            "{:<9} {:>8} {:>8} {:>10} {:>14} {:>12}   frames sent / received / dropped",
            "", "Mpps", "Gbit/s", "switch CPU", "wake-ups/frame", "sleeps/frame"
        );
        for (name, m) in [
            ("guestnet", &comparison.guestnet),
            ("anchor", &comparison.anchor),
        ] {
            let wakeups = m
                .wakeups_per_frame
                .map_or_else(|| "-".to_string(), |w| format!("{w:.4}"));
            let directions: Vec<String> = m
                .directions
                .iter()
                .filter(|d| d.sent != 0)
                .map(|d| {
                    format!(
                        "{}→{} {} / {} / {}",
                        d.from, d.to, d.sent, d.received, d.dropped
                    )
                })
                .collect();
            println!(
                "{name:<9} {:>8.3} {:>8.2} {:>9.0} % {wakeups:>14} {:>12.4}   {}",
                m.mpps,
                m.gbit_s,
                100.0 * m.switch_cpu,
                m.sleeps_per_frame,
                directions.join(", ")
            );
            for d in m.directions.iter().filter(|d| d.unaccounted != 0) {
                println!(
                    "WARNING: {name} {}→{}: {} frames unaccounted for",
                    d.from, d.to, d.unaccounted
                );
            }
            if !m.drops_by_reason.is_empty() {
                let drops: Vec<String> = m
                    .drops_by_reason
                    .iter()
                    .map(|(reason, count)| format!("{reason} {count}"))
                    .collect();
                println!("{:<9} drops: {}", "", drops.join(", "));
            }
            if m.queue_pairs.len() > 1 {
                let pairs: Vec<String> = m
                    .queue_pairs
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: a {} / {}, b {} / {}",
                            p.queue, p.sent[0], p.received[0], p.sent[1], p.received[1]
                        )
                    })
                    .collect();
                println!(
                    "{:<9} queue pairs (frames sent / received): {}",
                    "",
                    pairs.join("; ")
                );
            }
        }
        println!(
            "ratio     {:.2} × anchor (frames per second)",
            comparison.ratio
        );
    }
}
