//! The one pixel rule the network sees: u8 → (x − 127.5) / 127.5 in f32. Batches stay u8
//! until the device, which gathers from this table (`trainer-torch`'s `model::input`); host
//! tools use it too, so every path gives the same bits as the loader's former f32 batches.

/// `LUT[v]` is `(v − 127.5) / 127.5`, rounded once to f32.
pub const LUT: [f32; 256] = lut();

const fn lut() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as f32 - 127.5) / 127.5;
        i += 1;
    }
    t
}

/// One planar RGB slot (3×size×size u8) as normalised f32 in `out`, columns mirrored when `flip`.
pub fn slot_f32(slot: &[u8], size: usize, flip: bool, out: &mut [f32]) {
    for (row_in, row_out) in slot.chunks_exact(size).zip(out.chunks_exact_mut(size)) {
        if flip {
            row_in.iter().zip(row_out.iter_mut().rev()).for_each(|(&v, o)| *o = LUT[v as usize]);
        } else {
            row_in.iter().zip(row_out.iter_mut()).for_each(|(&v, o)| *o = LUT[v as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_formula_and_spans_minus_one_to_one() {
        assert_eq!((LUT[0], LUT[255]), (-1.0, 1.0));
        for v in 0..=255u8 {
            assert_eq!(LUT[v as usize].to_bits(), ((v as f32 - 127.5) / 127.5).to_bits(), "{v}");
        }
    }

    #[test]
    fn a_flipped_slot_is_the_plain_one_mirrored_per_row() {
        let s = 3;
        let slot: Vec<u8> = (0..3 * s * s).map(|i| (i * 29) as u8).collect();
        let (mut plain, mut flipped) = (vec![0f32; slot.len()], vec![0f32; slot.len()]);
        slot_f32(&slot, s, false, &mut plain);
        slot_f32(&slot, s, true, &mut flipped);
        for (p, f) in plain.chunks(s).zip(flipped.chunks(s)) {
            assert_eq!(p.iter().rev().collect::<Vec<_>>(), f.iter().collect::<Vec<_>>());
        }
        assert_eq!(plain[1], LUT[29]);
    }
}
