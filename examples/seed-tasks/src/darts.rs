//! The Monte-Carlo darts kernel, kept free of any wrun dependency so that
//! `wrun bench sandbox` compiles this very file natively and compares it
//! with the Wasm build of the same source.

/// Throws `darts` random points into the unit square (xorshift64 seeded by
/// `seed`) and counts those inside the quarter circle. Returns
/// `(inside, total)`; pi ≈ 4 · inside / total.
pub fn throw_darts(darts: u64, seed: u64) -> (u64, u64) {
    // splitmix64 turns any seed (even 0) into a good non-zero xorshift state.
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    state = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    state ^= state >> 31;
    if state == 0 {
        state = 1;
    }
    let mut inside = 0u64;
    for _ in 0..darts {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Two 26-bit coordinates from one draw, scaled to [0, 1).
        let x = (state >> 38) as f64 * (1.0 / (1u64 << 26) as f64);
        let y = ((state >> 12) & ((1 << 26) - 1)) as f64 * (1.0 / (1u64 << 26) as f64);
        if x * x + y * y < 1.0 {
            inside += 1;
        }
    }
    (inside, darts)
}
