//! The cost of the client core's per-frame work with many messages in flight.
//!
//! A QoS tick must cost O(expired), not O(pending): with 10,000 messages pending and
//! nothing due, a tick should take about as long as with 10.

use std::hint::black_box;
use std::time::Duration;

use bevy_im::client::{
    ClientConfig, ClientCore, DedupConfig, LoginRequest, Outgoing, QosReceiveFilter, QosSendConfig,
    QosSendTable, QosTick,
};
use bevy_im::protocol::{Frame, LoginResponse};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};

fn table_with(n: usize) -> QosSendTable {
    let mut t = QosSendTable::new(QosSendConfig::default());
    for i in 0..n {
        // Spread the sends over 3 s so deadlines differ, as in a real game.
        let at = Duration::from_micros((i as u64 * 3_000_000) / n.max(1) as u64);
        t.track(
            Frame::data("alice", "bob", "gg", true, Some(format!("fp-{i:08}")), 0),
            true,
            at,
        );
    }
    t
}

fn qos_tick(c: &mut Criterion) {
    // What the two groups time: nothing due at 2.999 s, exactly one resend at 3 s.
    let mut check = table_with(10);
    assert_eq!(
        check.tick(Duration::from_millis(2_999), true),
        QosTick::default()
    );
    assert_eq!(check.tick(Duration::from_secs(3), true).resend.len(), 1);

    let mut g = c.benchmark_group("qos_send_tick_nothing_due");
    for n in [10usize, 1_000, 10_000] {
        let mut t = table_with(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(t.tick(black_box(Duration::from_millis(2_999)), true)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("qos_send_tick_one_due");
    for n in [10usize, 1_000, 10_000] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched_ref(
                || table_with(n),
                // Exactly the first entry's deadline (sent at 0 s) is due at 3 s.
                |t| black_box(t.tick(Duration::from_secs(3), true)),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    c.bench_function("qos_send_track_and_ack_10000", |b| {
        let frames: Vec<_> = (0..10_000)
            .map(|i| Frame::data("alice", "bob", "gg", true, Some(format!("fp-{i:08}")), 0))
            .collect();
        b.iter_batched(
            || (QosSendTable::new(QosSendConfig::default()), frames.clone()),
            |(mut t, frames)| {
                for f in frames {
                    let fp = f.fp.clone().unwrap_or_default();
                    t.track(f, true, Duration::ZERO);
                    t.ack(&fp);
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
}

fn dedup(c: &mut Criterion) {
    c.bench_function("qos_receive_accept_unique_10000", |b| {
        let fps: Vec<String> = (0..10_000).map(|i| format!("fp-{i:08}")).collect();
        b.iter_batched_ref(
            || QosReceiveFilter::new(DedupConfig::default()),
            |f| {
                for (i, fp) in fps.iter().enumerate() {
                    black_box(f.accept(fp, Duration::from_millis(i as u64)));
                }
            },
            BatchSize::LargeInput,
        )
    });
}

fn codec(c: &mut Criterion) {
    let text = Frame::data(
        "alice",
        "bob",
        "hello bob, see you in the lobby",
        true,
        Some("98a4e2bf-a4a8-4ed5-aadf-bf4c34825e41".into()),
        7,
    )
    .to_json();
    c.bench_function("frame_decode", |b| {
        b.iter(|| black_box(Frame::decode(black_box(&text))))
    });
    let frame = Frame::decode(&text).expect("the benched frame decodes");
    c.bench_function("frame_encode", |b| b.iter(|| black_box(frame.encode())));
}

fn core_roundtrip(c: &mut Criterion) {
    // One chat message through the whole core: send, then the server's ACK.
    let mut client = ClientCore::new(ClientConfig::default());
    let t0 = Duration::ZERO;
    client
        .login(LoginRequest::new("alice", "t"), t0)
        .expect("the login is accepted");
    let link = client.link().expect("the login opens a link");
    client.on_link_opened(link, t0);
    let ok = Frame::login_response(
        "alice",
        &LoginResponse {
            code: 0,
            first_login_time: 1,
            ext: Vec::new(),
        },
    );
    client.on_text(link, &ok.to_json(), t0);
    client.take_actions();
    client.take_events();
    assert!(client.is_logged_in(), "the bench needs a logged-in client");
    let dialect = client.config().dialect;
    c.bench_function("core_send_then_ack", |b| {
        b.iter(|| {
            let fp = client
                .send(Outgoing::new("bob", "gg"), t0)
                .expect("the message is sent")
                .expect("a QoS message has a fingerprint");
            let ack = Frame::server_ack(dialect, "bob", "alice", &fp);
            client.on_text(link, &ack.to_json(), t0);
            black_box(client.take_actions());
            black_box(client.take_events());
        })
    });
    assert!(client.is_logged_in());
    assert_eq!(client.pending_count(), 0, "every message was ACKed");
}

criterion_group!(benches, qos_tick, dedup, codec, core_roundtrip);
criterion_main!(benches);
