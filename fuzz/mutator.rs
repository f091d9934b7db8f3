// A small deterministic mutation fuzzer for stable Rust, shared by the fuzz-style tests
// (`control/tests/fuzz.rs`, `dataplane/tests/fuzz_rx.rs`) through `include!`: it reads the
// committed corpus of a target (`fuzz/corpus/<target>/`), runs every file, then mutates them
// (bit flips, byte sets, interesting values, splices, truncations, duplications, inserts)
// for `RTCHAN_FUZZ_ITERS` inputs (default 3,000) from seed `RTCHAN_FUZZ_SEED` (default 1),
// so a run in CI is brief and reproducible, and a longer one is an environment variable away.

/// xorshift64*: enough randomness for mutation, reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
    4_294_967_295,
];

/// One mutation of `input`, `others` for splicing.
pub fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                // An interesting integer, big-endian (the wire) or as decimal text (JSON, TOML).
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len);
                if rng.below(2) == 0 {
                    let b = x.to_be_bytes();
                    let w = [1, 2, 4, 8][rng.below(4)];
                    for (k, byte) in b[8 - w..].iter().enumerate() {
                        if i + k < v.len() {
                            v[i + k] = *byte;
                        }
                    }
                } else {
                    let t = x.to_string();
                    v.splice(i..i, t.bytes());
                }
            }
            3 if len > 0 => v.truncate(rng.below(len)),
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 if !others.is_empty() => {
                let o = &others[rng.below(others.len())];
                if !o.is_empty() {
                    let a = rng.below(o.len());
                    let b = (a + 1 + rng.below(128)).min(o.len());
                    let at = rng.below(v.len() + 1);
                    v.splice(at..at, o[a..b].iter().copied());
                }
            }
            6 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                v.drain(a..b);
            }
            7 => {
                let tokens: [&[u8]; 12] = [
                    b"\"", b"{", b"}", b"[", b"]", b",", b":", b"\n", b"=", b"\\u0000", b"-1",
                    b"\"version\"",
                ];
                let t = tokens[rng.below(tokens.len())];
                let at = rng.below(v.len() + 1);
                v.splice(at..at, t.iter().copied());
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v
}

/// The committed corpus of `target` (sorted by file name).
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let v: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!v.is_empty(), "corpus {} is empty", dir.display());
    v
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `target` on the corpus, then on mutations of it; a panic names the seed and input.
pub fn fuzz(target: &str, mut run: impl FnMut(&[u8])) {
    let seeds = corpus(target);
    for s in &seeds {
        run(s);
    }
    let iters = env_u64("RTCHAN_FUZZ_ITERS", 3_000);
    let seed = env_u64("RTCHAN_FUZZ_SEED", 1);
    let mut rng = Rng::new(seed);
    let mut pool = seeds.clone();
    for i in 0..iters {
        let base = pool[rng.below(pool.len())].clone();
        let input = mutate(&mut rng, &base, &pool);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input)));
        if r.is_err() {
            let path = std::env::temp_dir().join(format!("rtchan-fuzz-{target}-crash-{seed}-{i}"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "fuzz target {target}: input {i} of seed {seed} failed; saved as {}",
                path.display()
            );
        }
        // Keep some mutants as bases so mutations compound.
        if pool.len() < 256 && rng.below(8) == 0 {
            pool.push(input);
        }
    }
    println!("fuzz target {target}: {} corpus inputs, {iters} mutations (seed {seed})", seeds.len());
}
