//! Lines of text to the debugger's console (qemu's semihosting), built
//! without `core::fmt`.
//!
//! Why not `hprintln!`: formatting links core's `fmt` machinery (padding,
//! integer `Display`, UTF-8 checks), about 3 KiB of flash for a report
//! that only ever prints words and unsigned numbers.

use cortex_m_semihosting::hio;

/// One line, at most `CAP` bytes; what does not fit is cut and marked with
/// `~` at its end, never lost silently.
pub struct Line {
    text: heapless::Vec<u8, CAP>,
    cut: bool,
}

/// The longest line the firmware prints (the summary) is about 100 bytes.
const CAP: usize = 160;

impl Line {
    /// An empty line.
    pub fn new() -> Self {
        Line {
            text: heapless::Vec::new(),
            cut: false,
        }
    }

    /// Appends text.
    pub fn s(&mut self, text: &str) -> &mut Self {
        self.bytes(text.as_bytes())
    }

    // By reference, not by value: a 160-byte line moved through every
    // call of a chain cost 0.4 KB of copies.
    // Out of line: inlined into each of the report's calls it cost 0.4 KB.
    #[inline(never)]
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            if self.text.push(b).is_err() {
                self.cut = true;
                break;
            }
        }
        self
    }

    /// Appends an unsigned number in decimal.
    pub fn n(&mut self, value: impl Into<u64>) -> &mut Self {
        self.number(value.into())
    }

    #[inline(never)]
    fn number(&mut self, mut value: u64) -> &mut Self {
        // Digits by subtracting powers of ten: a 64-bit division would link
        // the 0.9 KB software divider. u64::MAX has 20 digits.
        let mut digits = [0u8; 20];
        let mut len = 0;
        let mut power = 1u64;
        let mut powers = [0u64; 20];
        for p in powers.iter_mut().rev() {
            *p = power;
            power = power.wrapping_mul(10);
        }
        for (i, &power) in powers.iter().enumerate() {
            let mut digit = b'0';
            while value >= power {
                value -= power;
                digit += 1;
            }
            if len > 0 || digit != b'0' || i == powers.len() - 1 {
                digits[len] = digit;
                len += 1;
            }
        }
        self.bytes(&digits[..len])
    }

    /// Prints the line. Without a debugger attached there is nowhere to
    /// print to, and the line is dropped.
    pub fn print(&mut self) {
        if self.cut {
            let last = self.text.len() - 1;
            self.text[last] = b'~';
        }
        let _ = self.text.push(b'\n');
        if let Ok(mut out) = hio::hstdout() {
            let _ = out.write_all(&self.text);
        }
    }
}

/// A line that starts with the firmware's name, as its report lines do.
pub fn line() -> Line {
    let mut line = Line::new();
    line.s("lanyard-stm32: ");
    line
}

/// Shorthand for the most common line: a message.
pub fn say(text: &str) {
    line().s(text).print();
}
