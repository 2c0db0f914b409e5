//! `cargo bench` here: parse a generated 5,000-line Dockerfile (syntax tree), type every
//! instruction, and convert it all the way to a build graph.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rbuild_frontend::{instructions, BuildOptions, ImageConfig, ImageResolver};
use rbuild_types::{ImageRef, Platform};

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve_config(&self, _: &ImageRef, _: &Platform) -> Result<ImageConfig, String> {
        Ok(ImageConfig::default())
    }
}

fn bench(c: &mut Criterion) {
    let text = rbuild_bench_parse::dockerfile(5000);
    let mut g = c.benchmark_group("dockerfile-5000-lines");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| rbuild_frontend::parse(std::hint::black_box(&text)).unwrap())
    });
    g.bench_function("parse+typed", |b| {
        b.iter(|| {
            let df = rbuild_frontend::parse(std::hint::black_box(&text)).unwrap();
            for n in &df.instructions {
                instructions::parse_instruction(n).unwrap();
            }
        })
    });
    let opts = BuildOptions {
        dockerfile_name: "Dockerfile".into(),
        platform: Some("linux/amd64".parse().unwrap()),
        ..Default::default()
    };
    g.bench_function("convert", |b| {
        b.iter(|| rbuild_frontend::convert(std::hint::black_box(&text), &opts, &AnyImage).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
