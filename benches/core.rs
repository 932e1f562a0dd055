//! Micro-benchmarks of the per-connection hot path pieces: buffer checkout/release, token
//! encode/decode and a balancer pick for each algorithm.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use switchyard::balance::{new_balancer, PickCtx, Tried};
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

fn balancers(c: &mut Criterion) {
    let list = backends(16);
    for kind in [
        BalanceKind::RoundRobin,
        BalanceKind::Weighted,
        BalanceKind::LeastConn,
        BalanceKind::P2cEwma,
        BalanceKind::Hash,
    ] {
        let mut bal = new_balancer(kind, &list);
        let mut key = 0u64;
        c.bench_function(&format!("pick_{}_16", kind.as_str()), |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let ctx = PickCtx { hash: Some(key) };
                black_box(bal.pick(&list, Tried::default(), &ctx))
            })
        });
    }
}

criterion_group!(benches, buffer_pool, tokens, balancers);
criterion_main!(benches);
