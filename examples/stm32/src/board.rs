//! The board: a millisecond clock, USART1 with interrupt-driven
//! reception, the LED pin, a millisecond delay, the simulated sensor and
//! battery that stand in for hardware under qemu, and how the program
//! ends. Shared by the firmware and by the size baseline
//! (`src/bin/baseline.rs`).

use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use cortex_m_semihosting::debug;
use critical_section::Mutex;
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorKind, I2c, NoAcknowledgeSource, Operation, SevenBitAddress};
use lanyard_nostd::hal::{BatteryVoltage, SHT3X_ADDRESS, sht3x_crc};
use stm32f4::stm32f405 as pac;
use stm32f4::stm32f405::interrupt;

/// SysTick runs from the 168 MHz core clock; one interrupt per ms.
pub const CORE_HZ: u32 = 168_000_000;

/// Milliseconds since boot, counted by SysTick.
static TICKS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let t = TICKS.borrow(cs);
        t.set(t.get() + 1);
    });
}

/// Starts the millisecond clock.
pub fn start_clock(mut syst: cortex_m::peripheral::SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_counter();
    syst.enable_interrupt();
}

/// Milliseconds since [`start_clock`].
pub fn now_ms() -> u64 {
    critical_section::with(|cs| TICKS.borrow(cs).get())
}

/// Ends the program: qemu exits with `status`; on a board with a debugger
/// attached the debugger is told; without one, the core sleeps.
pub fn exit(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

/// A panic exits qemu (or stops at a debugger) with a failure status. It
/// does not format the panic message: that would link core's formatting
/// machinery for every panic site, several KiB of flash.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(debug::EXIT_FAILURE)
}

/// Bytes received but not yet read by the driver. 512 bytes hold more than
/// one whole frame of the largest inbound message; with updates, 1 KiB
/// holds the blocks in flight (four frames of a 128-byte block).
#[cfg(not(feature = "update"))]
pub const RX_QUEUE: usize = 512;
#[cfg(feature = "update")]
pub const RX_QUEUE: usize = 1024;

static RX: Mutex<RefCell<heapless::Deque<u8, RX_QUEUE>>> =
    Mutex::new(RefCell::new(heapless::Deque::new()));
/// Bytes lost to a full receive queue; the frame they belonged to fails
/// its CRC and is dropped by the link, so this is only for the report.
static RX_OVERFLOWS: AtomicU32 = AtomicU32::new(0);
static LED_TOGGLES: AtomicU32 = AtomicU32::new(0);

/// Bytes lost to a full receive queue since boot.
// Read by the link-rate program (`src/bin/linkrate.rs`), not the firmware.
#[allow(dead_code)]
pub fn rx_overflows() -> u32 {
    RX_OVERFLOWS.load(Ordering::Relaxed)
}

/// How many times the LED changed state.
pub fn led_toggles() -> u32 {
    LED_TOGGLES.load(Ordering::Relaxed)
}

#[interrupt]
fn USART1() {
    // SAFETY: the handler only reads SR and DR, which `Usart1` never reads
    // (it reads the queue instead); reading SR then DR also clears overrun.
    let usart = unsafe { &*pac::USART1::ptr() };
    let sr = usart.sr().read();
    if sr.rxne().bit_is_set() || sr.ore().bit_is_set() {
        let byte = usart.dr().read().dr().bits() as u8;
        critical_section::with(|cs| {
            if RX.borrow(cs).borrow_mut().push_back(byte).is_err() {
                RX_OVERFLOWS.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// USART1 on PA9 (TX) / PA10 (RX), 8N1, receiving through the interrupt.
pub struct Usart1 {
    usart: pac::USART1,
}

impl Usart1 {
    /// Clocks, pins and baud rate; enables reception and its interrupt.
    pub fn init(
        usart: pac::USART1,
        rcc: &pac::RCC,
        gpioa: &pac::GPIOA,
        pclk_hz: u32,
        baud: u32,
    ) -> Self {
        rcc.ahb1enr().modify(|_, w| w.gpioaen().set_bit());
        rcc.apb2enr().modify(|_, w| w.usart1en().set_bit());
        // PA9 and PA10 in alternate function 7 (USART1).
        gpioa
            .moder()
            .modify(|_, w| w.moder9().alternate().moder10().alternate());
        gpioa.afrh().modify(|_, w| w.afrh9().af7().afrh10().af7());
        // Oversampling by 16: BRR = f_pclk / baud, rounded.
        let brr = u16::try_from((pclk_hz + baud / 2) / baud).unwrap_or(u16::MAX);
        // SAFETY: any 16-bit value is a valid BRR.
        usart.brr().write(|w| unsafe { w.bits(brr) });
        usart.cr1().write(|w| {
            w.ue()
                .set_bit()
                .te()
                .set_bit()
                .re()
                .set_bit()
                .rxneie()
                .set_bit()
        });
        // SAFETY: unmasking is sound once the handler's data (the queue)
        // is initialised, which it is, statically.
        unsafe { cortex_m::peripheral::NVIC::unmask(pac::Interrupt::USART1) };
        Usart1 { usart }
    }
}

impl embedded_io::ErrorType for Usart1 {
    type Error = core::convert::Infallible;
}

impl embedded_io::ReadReady for Usart1 {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(critical_section::with(|cs| {
            !RX.borrow(cs).borrow().is_empty()
        }))
    }
}

impl embedded_io::Read for Usart1 {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = critical_section::with(|cs| {
                let mut q = RX.borrow(cs).borrow_mut();
                let mut n = 0;
                while n < buf.len() {
                    match q.pop_front() {
                        Some(b) => {
                            buf[n] = b;
                            n += 1;
                        }
                        None => break,
                    }
                }
                n
            });
            if n > 0 {
                return Ok(n);
            }
            cortex_m::asm::wfi();
        }
    }
}

impl embedded_io::Write for Usart1 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            while self.usart.sr().read().txe().bit_is_clear() {}
            self.usart.dr().write(|w| w.dr().set(u16::from(b)));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        while self.usart.sr().read().tc().bit_is_clear() {}
        Ok(())
    }
}

/// The status LED on PA5 (change the pin for your board).
pub struct StatusLed {
    gpioa: pac::GPIOA,
}

impl StatusLed {
    /// PA5 as a push-pull output, off.
    pub fn init(gpioa: pac::GPIOA) -> Self {
        gpioa.moder().modify(|_, w| w.moder5().output());
        gpioa.bsrr().write(|w| w.br5().set_bit());
        StatusLed { gpioa }
    }
}

impl embedded_hal::digital::ErrorType for StatusLed {
    type Error = core::convert::Infallible;
}

impl embedded_hal::digital::OutputPin for StatusLed {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.gpioa.bsrr().write(|w| w.br5().set_bit());
        LED_TOGGLES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.gpioa.bsrr().write(|w| w.bs5().set_bit());
        LED_TOGGLES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Delays on the SysTick millisecond clock (sleeping between ticks), so a
/// blink does not stop the clock. Delays round up to whole milliseconds.
pub struct Millis;

impl DelayNs for Millis {
    fn delay_ns(&mut self, ns: u32) {
        let until = now_ms() + u64::from(ns.div_ceil(1_000_000));
        while now_ms() < until {
            cortex_m::asm::wfi();
        }
    }
}

/// A simulated SHT3x on a simulated I2C bus: it answers the single-shot
/// command with a temperature that swings ±2 °C around 21 °C over a
/// two-minute period and 45 %RH, as raw words with their CRCs, so the
/// real driver (command, delay, CRC check, conversion) runs unchanged.
pub struct SimulatedSht3x {
    now: fn() -> u64,
    measuring: bool,
}

impl SimulatedSht3x {
    /// The sensor, reading the model at `now()`.
    pub fn new(now: fn() -> u64) -> Self {
        SimulatedSht3x {
            now,
            measuring: false,
        }
    }

    fn words(&self) -> [u8; 6] {
        // Triangle wave, period 120 s: 19 °C .. 23 °C.
        // The clock's low 32 bits: the wave jumps once every 49.7 days, and
        // a 64-bit remainder would link the software divider.
        let phase = ((self.now)() as u32 % 120_000) as f32 / 120_000.0;
        let tri = if phase < 0.5 {
            phase * 2.0
        } else {
            2.0 - phase * 2.0
        };
        let t = 19.0 + 4.0 * tri;
        let raw_t = ((t + 45.0) / 175.0 * 65535.0) as u16;
        let raw_rh = (0.45 * 65535.0) as u16;
        let [t0, t1] = raw_t.to_be_bytes();
        let [h0, h1] = raw_rh.to_be_bytes();
        [t0, t1, sht3x_crc(&[t0, t1]), h0, h1, sht3x_crc(&[h0, h1])]
    }
}

impl embedded_hal::i2c::ErrorType for SimulatedSht3x {
    type Error = ErrorKind;
}

impl I2c<SevenBitAddress> for SimulatedSht3x {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != SHT3X_ADDRESS {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => self.measuring = *bytes == [0x24, 0x00],
                Operation::Read(buf) => {
                    if !core::mem::take(&mut self.measuring) {
                        // No measurement started: the part NACKs its
                        // read header.
                        return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
                    }
                    let words = self.words();
                    for (b, w) in buf.iter_mut().zip(words) {
                        *b = w;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A battery that discharges from 4 100 mV by 1 mV a second (a Li-ion
/// cell on the default curve crosses the 10 % critical threshold after
/// about 12 minutes).
pub struct SimulatedBattery {
    now: fn() -> u64,
}

impl SimulatedBattery {
    /// The model at `now()`.
    pub fn new(now: fn() -> u64) -> Self {
        SimulatedBattery { now }
    }
}

impl BatteryVoltage for SimulatedBattery {
    fn millivolts(&mut self) -> Option<u16> {
        // Clamped before dividing: u32 division is one instruction, u64
        // division a library routine.
        let drained = ((self.now)().min(1_000_000) as u32 / 1_000) as u16;
        Some(4_100 - drained)
    }
}

/// Stack high-water mark: the free RAM between the statics and the stack
/// is painted at boot, and the first word no longer painted is as deep as
/// the stack has been.
pub mod stack {
    const PAINT: u32 = 0x5354_4b21;

    unsafe extern "C" {
        /// End of the statics (cortex-m-rt's linker script).
        static mut __sheap: u32;
        /// Top of the stack (cortex-m-rt's linker script).
        static _stack_start: u32;
    }

    fn bounds() -> (*mut u32, usize) {
        let low = &raw mut __sheap;
        let top = (&raw const _stack_start) as usize;
        (low, top)
    }

    /// Paints from the end of the statics to 256 bytes below the current
    /// stack pointer. Call first thing in `main`.
    pub fn paint() {
        let (low, _) = bounds();
        let sp = cortex_m::register::msp::read() as usize - 256;
        let mut p = low;
        while (p as usize) < sp {
            // SAFETY: [low, sp) is RAM no static and no live stack frame
            // uses: above the statics, below the stack pointer (less a
            // margin for this function's own frame).
            unsafe {
                p.write_volatile(PAINT);
                p = p.add(1);
            }
        }
    }

    /// The deepest the stack has been since `paint`, in bytes.
    pub fn peak() -> usize {
        let (low, top) = bounds();
        let mut p = low;
        // SAFETY: reads of RAM between the statics and the top of the
        // stack, all of it mapped.
        while (p as usize) < top && unsafe { p.read_volatile() } == PAINT {
            p = unsafe { p.add(1) };
        }
        top - p as usize
    }
}
