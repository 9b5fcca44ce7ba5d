//! The size baseline: the reference firmware's board without Lanyard.
//!
//! Same clock, USART1 with its receive interrupt, LED, delay, semihosting
//! report and exit as `src/main.rs`, doing the least a serial device does:
//! it greets over the line, echoes what has arrived, blinks once and
//! reports. The test command builds it and runs it in qemu, and the size
//! report subtracts it from the firmware: what Lanyard adds to a firmware,
//! measured in the same run, not estimated from symbol names.

#![no_std]
#![no_main]

// The simulated sensors are the firmware's, unused here (and not linked).
#[allow(dead_code)]
#[path = "../board.rs"]
mod board;
// The small memcpy and friends, as in the firmware.
#[path = "../mem.rs"]
mod mem;
#[allow(dead_code)]
#[path = "../report.rs"]
mod report;

use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use embedded_io::{Read, ReadReady, Write};
use stm32f4::stm32f405 as pac;

use board::{Millis, StatusLed, Usart1, exit};
use report::Line;

#[entry]
fn main() -> ! {
    let (Some(cp), Some(dp)) = (cortex_m::Peripherals::take(), pac::Peripherals::take()) else {
        exit(debug::EXIT_FAILURE);
    };
    board::start_clock(cp.SYST);
    let mut usart = Usart1::init(dp.USART1, &dp.RCC, &dp.GPIOA, board::CORE_HZ / 2, 115_200);
    let mut led = StatusLed::init(dp.GPIOA);

    let _ = usart.write_all(b"baseline\r\n");
    let mut buf = [0u8; 64];
    while usart.read_ready().unwrap_or(false) {
        let n = usart.read(&mut buf).unwrap_or(0);
        let _ = usart.write_all(&buf[..n]);
    }
    let _ = led.set_high();
    Millis.delay_ms(10);
    let _ = led.set_low();
    Line::new()
        .s("baseline: board up, led toggles=")
        .n(board::led_toggles())
        .s(" after ")
        .n(board::now_ms())
        .s(" ms")
        .print();
    exit(debug::EXIT_SUCCESS)
}
