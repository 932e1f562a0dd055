//! Micro-benchmarks of the per-connection hot path pieces: buffer checkout/release, token
//! encode/decode and a balancer pick for each algorithm; and what a snapshot change costs a
//! worker (following a cluster to its new selection table) against what the control plane
//! pays once per snapshot (building the table).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use switchyard::balance::{PickCtx, PickState, SelectionTable, Tried};
use switchyard::config::BalanceKind;
use switchyard::engine::token::{self, TimerKey};
use switchyard::io::BufferPool;
use switchyard::snapshot::Backend;

fn buffer_pool(c: &mut Criterion) {
    let mut pool = BufferPool::new(16 * 1024, 1024);
    c.bench_function("buffer_checkout_fill_release", |b| {
        b.iter(|| {
            let mut buf = pool.checkout().expect("buffer");
            let spare = pool.spare(&mut buf);
            spare[0] = 1;
            buf.fill(1);
            black_box(pool.data(&buf));
            buf.consume(1);
            pool.release(buf);
        })
    });
}

fn tokens(c: &mut Criterion) {
    c.bench_function("token_encode_decode", |b| {
        let mut k = 0usize;
        b.iter(|| {
            k = (k + 1) & 0xffff;
            black_box(token::decode(token::conn(black_box(k as u32))));
            black_box(TimerKey::decode(TimerKey::Session(black_box(k)).encode()))
        })
    });
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            name: format!("127.0.0.1:{}", 9000 + i),
            addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
            weight: 1 + (i as u32 % 4),
            live: Arc::default(),
        })
        .collect()
}

fn table(kind: BalanceKind, list: &[Backend]) -> Arc<SelectionTable> {
    Arc::new(SelectionTable::build("bench", kind, list))
}

fn balancers(c: &mut Criterion) {
    let list = backends(16);
    for kind in [
        BalanceKind::RoundRobin,
        BalanceKind::Weighted,
        BalanceKind::LeastConn,
        BalanceKind::P2cEwma,
        BalanceKind::Hash,
    ] {
        let mut state = PickState::new(table(kind, &list), None);
        let mut key = 0u64;
        c.bench_function(&format!("pick_{}_16", kind.as_str()), |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let ctx = PickCtx { hash: Some(key) };
                black_box(state.pick(&list, Tried::default(), &ctx))
            })
        });
    }
}

/// A `hash` cluster of 64 backends, one of them in slow start: every step republishes the
/// snapshot with a new weight. Before selection tables were shared, every worker rebuilt the
/// Maglev table (`control_build_*`) on its request path after each step; now a worker follows
/// the new table and settles its state at the next pick (`worker_follow_*`).
fn snapshot_change(c: &mut Criterion) {
    let outlier = switchyard::config::resilience::OutlierConfig {
        consecutive: 5,
        base_ejection: std::time::Duration::from_secs(10),
        max_ejection: std::time::Duration::from_secs(300),
        max_ejected_percent: 50,
    };
    let steps: Vec<(Vec<Backend>, Arc<SelectionTable>)> = [10, 20]
        .iter()
        .map(|&w| {
            let mut list = backends(64);
            for b in &mut list {
                b.weight = 100;
            }
            list[63].weight = w;
            let t = table(BalanceKind::Hash, &list);
            (list, t)
        })
        .collect();
    c.bench_function("control_build_hash_64", |b| {
        b.iter(|| {
            black_box(SelectionTable::build(
                "bench",
                BalanceKind::Hash,
                &steps[0].0,
            ))
        })
    });
    // A weight step: same addresses, new table.
    let mut state = PickState::new(steps[0].1.clone(), Some(&outlier));
    let mut k = 0usize;
    let ctx = PickCtx { hash: Some(7) };
    c.bench_function("worker_follow_weight_step_hash_64", |b| {
        b.iter(|| {
            k ^= 1;
            let (list, t) = &steps[k];
            state.follow(t, Some(&outlier));
            black_box(state.pick(list, Tried::default(), &ctx))
        })
    });
    // Backends added and removed (another numbering): the state is carried by address.
    let renumbered: Vec<(Vec<Backend>, Arc<SelectionTable>)> = [false, true]
        .iter()
        .map(|&moved| {
            let mut list = backends(65);
            if moved {
                list.reverse(); // another order, and 9064 in for 9000
            }
            list.truncate(64);
            let t = table(BalanceKind::Hash, &list);
            (list, t)
        })
        .collect();
    let mut state = PickState::new(renumbered[0].1.clone(), Some(&outlier));
    c.bench_function("worker_follow_renumber_hash_64", |b| {
        b.iter(|| {
            k ^= 1;
            let (list, t) = &renumbered[k];
            state.follow(t, Some(&outlier));
            black_box(state.pick(list, Tried::default(), &ctx))
        })
    });
}

criterion_group!(benches, buffer_pool, tokens, balancers, snapshot_change);
criterion_main!(benches);
