//! Plugin runtime microbenchmarks (issue targets: fold <= 0.2 µs per share,
//! instantiate <= 30 µs, small call <= 2 µs).
//!
//! `cargo bench -p guardian --bench plugins`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardian::runtime::{Runtime, RuntimeOptions};
use guardian_sdk::testing::pack;

fn plugins(c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
    let sum = runtime.load_builtin("sum").expect("sum");
    let config = sum.configure(r#"{"length": 10}"#).expect("configure");
    let shares: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            sum.shard(&config, "[1,2,3,4,5,6,7,8,9,10]", 2, &[i as u8; 32])
                .expect("shard")
                .remove(0)
        })
        .collect();
    let refs: Vec<&[u8]> = shares.iter().map(Vec::as_slice).collect();
    let (data, ends) = pack(&refs);
    let agg = sum.init(&config).expect("init");

    let mut group = c.benchmark_group("sum length 10");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("accumulate 1000 shares (per call)", |b| {
        b.iter(|| {
            sum.accumulate(&config, &agg, &data, &ends)
                .expect("accumulate")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("calls");
    group.bench_function("validate one share (sum, length 10)", |b| {
        b.iter(|| sum.validate(&config, &shares[0], 0).expect("validate"))
    });
    let count = runtime.load_builtin("count").expect("count");
    let count_config = count.configure("{}").expect("configure");
    let count_share = count
        .shard(&count_config, "1", 2, &[1; 32])
        .expect("shard")
        .remove(0);
    group.bench_function("validate one share (count)", |b| {
        b.iter(|| {
            count
                .validate(&count_config, &count_share, 0)
                .expect("validate")
        })
    });
    group.bench_function("instantiate (store + instance + drop)", |b| {
        b.iter(|| sum.instantiate_idle().expect("instantiate"))
    });
    group.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
