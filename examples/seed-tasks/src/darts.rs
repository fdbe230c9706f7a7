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
        // Two 26-bit coordinates from one draw: the point (x, y) / 2^26 lies
        // in the unit square, and it is inside the circle when
        // x² + y² < 2^52. Integers give exactly the answer floats would
        // (every value here is exact in f64) and compile alike everywhere.
        let x = state >> 38;
        let y = (state >> 12) & ((1 << 26) - 1);
        inside += u64::from(x * x + y * y < 1 << 52);
    }
    (inside, darts)
}
