//! The serial link's raw throughput under qemu: what the emulated USART1
//! carries with nothing of Lanyard on it, the figure the firmware update's
//! speed through the serial bridge is set against.
//!
//! The same board set-up as the firmware (interrupt-driven reception into
//! the same queue). It says `linkrate` on the line, reads
//! [`BYTES`] bytes and answers `ok`, then writes [`BYTES`] bytes of the
//! same pattern, and reports on the debugger's console the bytes it
//! received, their sum and the bytes its receive queue lost (none: qemu
//! holds a byte back until the guest has read the last). The host times
//! both directions (`sdk-std/tests/qemu_stm32_update.rs`).

#![no_std]
#![no_main]

// The simulated sensors are the firmware's, unused here (and not linked).
#[allow(dead_code)]
#[path = "../board.rs"]
mod board;
#[path = "../mem.rs"]
mod mem;
#[allow(dead_code)]
#[path = "../report.rs"]
mod report;

use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use embedded_io::{Read, Write};
use stm32f4::stm32f405 as pac;

use board::{Usart1, exit};
use report::Line;

/// Bytes moved each way: 64 KiB, about the size of the firmware image an
/// update moves.
const BYTES: u32 = 64 * 1024;

/// The byte at `i` of the pattern both sides send.
fn pattern(i: u32) -> u8 {
    (i.wrapping_mul(7) % 251) as u8
}

#[entry]
fn main() -> ! {
    let (Some(cp), Some(dp)) = (cortex_m::Peripherals::take(), pac::Peripherals::take()) else {
        exit(debug::EXIT_FAILURE);
    };
    board::start_clock(cp.SYST);
    let mut usart = Usart1::init(dp.USART1, &dp.RCC, &dp.GPIOA, board::CORE_HZ / 2, 115_200);
    let _ = usart.write_all(b"linkrate\r\n");

    let mut received: u32 = 0;
    let mut sum: u32 = 0;
    let mut wrong: u32 = 0;
    let mut buf = [0u8; 256];
    while received < BYTES {
        let n = usart.read(&mut buf).unwrap_or(0);
        for &b in &buf[..n] {
            if b != pattern(received) {
                wrong += 1;
            }
            sum = sum.wrapping_add(u32::from(b));
            received += 1;
        }
    }
    let _ = usart.write_all(b"ok\r\n");

    let mut chunk = [0u8; 256];
    let mut sent: u32 = 0;
    while sent < BYTES {
        for (k, c) in chunk.iter_mut().enumerate() {
            *c = pattern(sent + k as u32);
        }
        let n = (BYTES - sent).min(chunk.len() as u32);
        let _ = usart.write_all(&chunk[..n as usize]);
        sent += n;
    }
    let _ = usart.flush();
    Line::new()
        .s("linkrate: received ")
        .n(received)
        .s(" sum ")
        .n(sum)
        .s(" wrong ")
        .n(wrong)
        .s(" lost ")
        .n(board::rx_overflows())
        .s(", sent ")
        .n(sent)
        .print();
    exit(debug::EXIT_SUCCESS)
}
