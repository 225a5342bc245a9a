//! Time one 1x4x64x64 draw (an SD1.5 512² latent) per noise source: median of many runs.
//! Run with `cargo bench --bench noise`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use monitor::sd::noise::{build, NoiseDtype, NoiseKind};
use monitor::sd::npy::write_npy_f32;

const SHAPE: [usize; 4] = [1, 4, 64, 64];

fn median_us(mut f: impl FnMut()) -> (f64, usize) {
    // Warm up, then run for at least ~1 s or 200 iterations.
    for _ in 0..5 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 200 || (start.elapsed() < Duration::from_secs(1) && times.len() < 100_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2].as_secs_f64() * 1e6, times.len())
}

fn main() {
    let dir = std::env::temp_dir().join(format!("monitor-noise-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("noise.npy");
    let data = vec![0.25f32; SHAPE.iter().product()];
    write_npy_f32(std::fs::File::create(&file).expect("create"), &SHAPE, &data).expect("write");

    for kind in NoiseKind::ALL {
        for dtype in [NoiseDtype::F32, NoiseDtype::F16] {
            let (us, n) = if kind == NoiseKind::File {
                // A file source yields one draw, so time open + read + draw.
                median_us(|| {
                    let mut s = build(kind, 0, Some(&file)).expect("file source");
                    black_box(s.randn(&SHAPE, dtype).expect("draw"));
                })
            } else {
                let mut s = build(kind, 42, None).expect("source");
                median_us(|| {
                    black_box(s.randn(&SHAPE, dtype).expect("draw"));
                })
            };
            println!(
                "{:<11} {:?} 1x4x64x64: median {us:>9.1} µs over {n} iterations",
                kind.as_str(),
                dtype
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
