//! An MSB-first bit reader over a byte slice, with the exp-Golomb codes of H.264, shared by
//! the SPS parser ([`super::h264`]) and the AudioSpecificConfig parser ([`super::aac`]).
//! Every read is bounds-checked; running out of bits is an error naming the field.

/// Longest exp-Golomb prefix accepted (a 32-bit value needs at most 31 leading zeros).
const MAX_EXP_GOLOMB_PREFIX: u32 = 31;

/// A failed read, naming the syntax element being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitsError {
    /// The data ended.
    #[error("truncated at {0}")]
    Truncated(&'static str),
    /// The value does not fit the field.
    #[error("{0} out of range")]
    OutOfRange(&'static str),
}

/// MSB-first bit reader.
#[derive(Debug)]
pub struct BitReader<'a> {
    /// The bytes (for H.264: RBSP, emulation prevention already removed).
    data: &'a [u8],
    /// Index of the next unread bit.
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// Creates a reader at bit 0.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Number of unread bits.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_mul(8).saturating_sub(self.pos)
    }

    /// Reads one bit.
    pub fn bit(&mut self, what: &'static str) -> Result<u32, BitsError> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(BitsError::Truncated(what))?;
        let shift = 7 - (self.pos % 8);
        self.pos = self.pos.saturating_add(1);
        Ok(u32::from((byte >> shift) & 1))
    }

    /// Reads one bit as a boolean flag.
    pub fn flag(&mut self, what: &'static str) -> Result<bool, BitsError> {
        Ok(self.bit(what)? == 1)
    }

    /// Reads `n` (at most 32) bits, MSB first.
    pub fn bits(&mut self, n: u32, what: &'static str) -> Result<u32, BitsError> {
        let mut v: u64 = 0;
        for _ in 0..n.min(32) {
            v = (v << 1) | u64::from(self.bit(what)?);
        }
        u32::try_from(v).map_err(|_| BitsError::OutOfRange(what))
    }

    /// Reads `n` (at most 8) bits as a `u8`.
    pub fn u8_bits(&mut self, n: u32, what: &'static str) -> Result<u8, BitsError> {
        u8::try_from(self.bits(n.min(8), what)?).map_err(|_| BitsError::OutOfRange(what))
    }

    /// Advances to the next byte boundary.
    pub fn byte_align(&mut self) {
        let rem = self.pos % 8;
        if rem != 0 {
            self.pos = self.pos.saturating_add(8 - rem);
        }
    }

    /// Reads an unsigned exp-Golomb value `ue(v)`.
    pub fn ue(&mut self, what: &'static str) -> Result<u32, BitsError> {
        let mut zeros = 0u32;
        while self.bit(what)? == 0 {
            zeros = zeros.saturating_add(1);
            if zeros > MAX_EXP_GOLOMB_PREFIX {
                return Err(BitsError::OutOfRange(what));
            }
        }
        let suffix = u64::from(self.bits(zeros, what)?);
        let value = (1u64 << zeros) - 1 + suffix;
        u32::try_from(value).map_err(|_| BitsError::OutOfRange(what))
    }

    /// Reads `ue(v)` and rejects values above `max`, returning a `u8`.
    pub fn ue_max(&mut self, max: u32, what: &'static str) -> Result<u8, BitsError> {
        let v = self.ue(what)?;
        if v > max {
            return Err(BitsError::OutOfRange(what));
        }
        u8::try_from(v).map_err(|_| BitsError::OutOfRange(what))
    }

    /// Reads a signed exp-Golomb value `se(v)`.
    pub fn se(&mut self, what: &'static str) -> Result<i32, BitsError> {
        let k = i64::from(self.ue(what)?);
        let magnitude = (k + 1) / 2;
        let value = if k % 2 == 1 { magnitude } else { -magnitude };
        i32::try_from(value).map_err(|_| BitsError::OutOfRange(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_exp_golomb() {
        // 1 | 010 | 011 | 00100 | 1...: ue = 0, 1, 2, 3; then bits.
        let mut r = BitReader::new(&[0b1010_0110, 0b0100_1111]);
        assert_eq!(r.ue("a"), Ok(0));
        assert_eq!(r.ue("b"), Ok(1));
        assert_eq!(r.se("c"), Ok(-1));
        assert_eq!(r.ue("d"), Ok(3));
        assert_eq!(r.remaining(), 4);
        assert_eq!(r.bits(4, "e"), Ok(0b1111));
        assert_eq!(r.bit("f"), Err(BitsError::Truncated("f")));
    }

    #[test]
    fn long_prefix_is_out_of_range_not_a_panic() {
        let zeros = [0u8; 8];
        assert_eq!(
            BitReader::new(&zeros).ue("x"),
            Err(BitsError::OutOfRange("x"))
        );
        let mut r = BitReader::new(&[0xFF]);
        r.bit("a").unwrap();
        r.byte_align();
        assert_eq!(r.remaining(), 0);
    }
}
