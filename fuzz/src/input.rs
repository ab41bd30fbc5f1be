//! Reading structured choices out of fuzz bytes. Running out of bytes is not an error:
//! every read then yields zero, so any input means something.

/// The unread rest of a fuzz input.
pub struct Input<'a> {
    buf: &'a [u8],
}

impl<'a> Input<'a> {
    /// All of `buf`, unread.
    pub fn new(buf: &'a [u8]) -> Self {
        Input { buf }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes, or as many as are left.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.buf.split_at(n.min(self.buf.len()));
        self.buf = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.buf.len())
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next 8 bytes, little-endian, zero-padded past the end.
    pub fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        let b = self.bytes(8);
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }

    /// The next 2 bytes, little-endian, zero-padded past the end.
    pub fn u16(&mut self) -> u16 {
        let mut a = [0u8; 2];
        let b = self.bytes(2);
        a[..b.len()].copy_from_slice(b);
        u16::from_le_bytes(a)
    }
}
