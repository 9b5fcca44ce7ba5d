//! Lanyard's reference firmware for the STM32F405 (the chip of qemu's
//! `netduinoplus2` machine).
//!
//! The device agent runs on [`lanyard_nostd::driver::Driver`], which speaks
//! the framed link on USART1 (115 200 baud, 8N1) to a gateway bridge. The
//! rest of this file is the board: a millisecond clock from SysTick, a
//! USART whose received bytes an interrupt queues, an LED on a GPIO pin,
//! and sensors. Under qemu no sensor answers, so the SHT3x driver of
//! lanyard-nostd talks to a simulated SHT3x on a simulated I2C bus, and the
//! battery follows a deterministic discharge model; on a real board, pass
//! the HAL's I2C and ADC instead (see README.md).
//!
//! What happens is printed over semihosting. The firmware exits (status 0)
//! once it has been decommissioned, with a summary; with status 1 if the
//! link fails; a panic exits with status 1 too (panic-semihosting).

#![no_std]
#![no_main]

mod board;
mod mem;
mod report;
#[cfg(feature = "serde")]
mod typed;
#[cfg(feature = "update")]
mod updates;

use core::cell::RefCell;
use cortex_m_rt::entry;
use cortex_m_semihosting::debug;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::SlowTelemetryOnLowBattery;
use lanyard_core::agent::lifecycle::LifecycleState;
#[cfg(not(feature = "update"))]
use lanyard_core::agent::platform::NoStorage;
use lanyard_core::agent::platform::{MirrorDesired, Platform};
use lanyard_core::agent::{Agent, AgentEvent, Identity};
use lanyard_nostd::driver::{Driver, link_buffer_len};
use lanyard_nostd::hal::{BatteryCurve, BoardCommands, BoardProbe, Led, SHT3X_ADDRESS, Sht3x};
use static_cell::StaticCell;
use stm32f4::stm32f405 as pac;

use board::{Millis, SimulatedBattery, SimulatedSht3x, StatusLed, Usart1, exit, now_ms};
use report::{Line, line, say};

/// Messages the agent queues while the link is busy, and their size.
const QUEUE: usize = 8;
const MESSAGE: usize = 256;
/// The link's buffers: one framed envelope of the largest message.
const LINK: usize = link_buffer_len(MESSAGE);

type FirmwareDriver = Driver<Usart1, SlowTelemetryOnLowBattery, QUEUE, MESSAGE, LINK, LINK>;

/// A locally administered MAC: the device id is `ly-024c59000001`. A real
/// board would take it from its network interface or the chip's unique id.
const MAC: [u8; 6] = [0x02, 0x4c, 0x59, 0x00, 0x00, 0x01];

/// The version this image reports (`LANYARD_FIRMWARE_VERSION` at build
/// time, else the crate's).
const VERSION: &str = match option_env!("LANYARD_FIRMWARE_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[entry]
fn main() -> ! {
    board::stack::paint();
    let (Some(cp), Some(dp)) = (cortex_m::Peripherals::take(), pac::Peripherals::take()) else {
        // Only reachable if main ran twice.
        exit(debug::EXIT_FAILURE);
    };
    board::start_clock(cp.SYST);

    let usart = Usart1::init(dp.USART1, &dp.RCC, &dp.GPIOA, board::CORE_HZ / 2, 115_200);
    let led_pin = StatusLed::init(dp.GPIOA);

    let driver = place_driver(usart);

    let mut sht = Sht3x::new(SimulatedSht3x::new(now_ms), Millis, SHT3X_ADDRESS);
    // One board lent as the health probe, the telemetry source and the
    // sensor of `read_sensor`: its failure count and data age follow
    // every read.
    let probe = RefCell::new(BoardProbe::new(
        SimulatedBattery::new(now_ms),
        BatteryCurve::default(),
        move || sht.measure().ok(),
        now_ms(),
    ));
    let mut led = Led::new(led_pin, Millis);
    // qemu does not emulate the flash controller, so nothing is kept; on a
    // board, use `lanyard_nostd::flash::FlashStore` on the HAL's flash.
    #[cfg(not(feature = "update"))]
    let mut storage = NoStorage;
    // With updates, the download record is kept on the "flash" of
    // updates.rs (the agent's own state still is not, without the
    // `persistence` feature).
    #[cfg(feature = "update")]
    let mut storage = updates::store();
    let mut commands = BoardCommands {
        blink: |count, period_ms| led.blink(count, period_ms),
        read: |now| probe.try_borrow_mut().ok()?.read_sensors(now),
    };
    let mut health = &probe;
    #[cfg(not(feature = "serde"))]
    let mut telemetry = &probe;
    #[cfg(feature = "serde")]
    let mut telemetry = typed::TypedTelemetry(|now| {
        use lanyard_core::agent::platform::HealthProbe;
        let mut p = probe.try_borrow_mut().ok()?;
        let r = p.read_sensors(now)?;
        Some((r, p.metrics(now).battery_pct))
    });
    let mut platform = Platform {
        storage: &mut storage,
        probe: &mut health,
        telemetry: &mut telemetry,
        commands: &mut commands,
        desired: &mut MirrorDesired,
    };

    line()
        .s("booting as ")
        .s(driver.agent().device_id())
        .s(" version ")
        .s(VERSION)
        .print();
    print_ram_use();
    boot(driver, &mut platform);
    #[cfg(feature = "update")]
    let mut session = {
        let mut session = updates::session();
        let trial = updates::running_trial(&mut session);
        let read = || probe.try_borrow_mut().ok()?.read_sensors(now_ms());
        lanyard_nostd::driver::boot_updates(&mut session, platform.storage, trial, || {
            let passed = updates::self_test(read);
            say(if passed {
                "self-test passed"
            } else {
                "self-test failed"
            });
            passed
        });
        session
    };
    // Booting reads the saved state into a 4 KiB buffer: measured apart
    // from the running loop, which paints afresh.
    let boot_stack = board::stack::peak();
    board::stack::paint();

    #[cfg(not(feature = "update"))]
    let result = driver.run(
        &mut platform,
        now_ms,
        // Sleep until an interrupt: SysTick every ms, or a received byte.
        |_deadline| cortex_m::asm::wfi(),
        |agent| {
            while let Some(event) = agent.poll_event() {
                report(now_ms(), &event);
            }
            agent.state() == LifecycleState::Decommissioned
        },
    );
    #[cfg(feature = "update")]
    let result = run_updating(driver, &mut platform, &mut session);
    let link = driver.link_mut().stats();
    let stats = driver.stats();
    let agent = driver.agent().stats();
    line()
        .s("summary frames_in=")
        .n(stats.frames_in)
        .s(" frames_out=")
        .n(stats.frames_out)
        .s(" bad_frames=")
        .n(link.crc_errors + link.malformed + link.oversized + stats.bad_envelopes)
        .s(" commands=")
        .n(agent.commands_executed)
        .s(" duplicates=")
        .n(agent.duplicate_commands)
        .s(" refused=")
        .n(agent.inbound_refused)
        .print();
    line().s("led toggles=").n(board::led_toggles()).print();
    let running_stack = board::stack::peak();
    line()
        .s("stack peak=")
        .n(boot_stack.max(running_stack) as u64)
        .s(" bytes (boot ")
        .n(boot_stack as u64)
        .s(", running ")
        .n(running_stack as u64)
        .s(")")
        .print();
    match result {
        Ok(()) => {
            say("decommissioned, exiting");
            exit(debug::EXIT_SUCCESS)
        }
        Err(_) => {
            say("serial link failed");
            exit(debug::EXIT_FAILURE)
        }
    }
}

/// The loop of a firmware that takes updates: the driver's, with the
/// update session beside the agent, its states printed, and a reset when
/// the session asks for one.
#[cfg(feature = "update")]
fn run_updating(
    driver: &mut FirmwareDriver,
    platform: &mut Platform<'_>,
    session: &mut lanyard_core::update::UpdateSession<updates::Slot>,
) -> Result<(), lanyard_nostd::driver::DriverError<core::convert::Infallible>> {
    let mut last = None;
    loop {
        let step = driver.poll_updating(now_ms(), platform, session, VERSION)?;
        while let Some(event) = driver.agent_mut().poll_event() {
            report(now_ms(), &event);
        }
        if let Some(r) = session.updater().report(now_ms())
            && last != Some(r.state)
        {
            last = Some(r.state);
            let mut l = Line::new();
            let l = l.s("[").n(now_ms()).s("] update ").s(r.state.name());
            if let Some(why) = r.reason {
                l.s(" (").s(why.name()).s(")");
            }
            l.print();
        }
        if step.restart_due {
            say("restarting");
            updates::restart();
        }
        if driver.agent().state() == LifecycleState::Decommissioned {
            return Ok(());
        }
        cortex_m::asm::wfi();
    }
}

/// Builds the agent and its driver in static RAM, so the size report
/// counts them. Not inlined: the agent is built on this function's stack
/// frame before it moves to its static, and that frame must be gone before
/// the driver runs, not held for the life of `main`.
#[inline(never)]
fn place_driver(usart: Usart1) -> &'static mut FirmwareDriver {
    let identity = Identity {
        mac: MAC,
        device_id: None,
        firmware: VERSION,
    };
    static DRIVER: StaticCell<FirmwareDriver> = StaticCell::new();
    // Built by a closure, which lets the compiler construct it in its
    // static; `singleton!` built it on the stack first (11.7 KB there).
    // A second call would panic (and exit); there is none.
    DRIVER.init_with(|| {
        Driver::new(
            Agent::new(identity, DeviceConfig::default(), SlowTelemetryOnLowBattery),
            usart,
        )
    })
}

/// Boots the agent (its persisted-record buffer is on this frame, gone
/// once booted, for the same reason as [`place_driver`]).
#[inline(never)]
fn boot(driver: &mut FirmwareDriver, platform: &mut Platform<'_>) {
    if driver.boot(now_ms(), platform).is_err() {
        say("boot failed");
        exit(debug::EXIT_FAILURE);
    }
}

/// What the fixed capacities cost on this target (docs/capacities.md
/// quotes these lines).
fn print_ram_use() {
    use core::mem::size_of;
    type Tree = lanyard_core::shadow::StateTree<
        { lanyard_core::agent::SHADOW_LEAVES },
        { lanyard_core::agent::SHADOW_POOL },
    >;
    line()
        .s("ram driver=")
        .n(size_of::<FirmwareDriver>() as u64)
        .s(" agent=")
        .n(size_of::<Agent<SlowTelemetryOnLowBattery, QUEUE, MESSAGE>>() as u64)
        .s(" shadow_tree=")
        .n(size_of::<Tree>() as u64)
        .s(" config=")
        .n(size_of::<DeviceConfig>() as u64)
        .s(" link_buffers=")
        .n(2 * LINK as u64)
        .s(" rx_queue=")
        .n(board::RX_QUEUE as u64)
        .print();
}

/// One line per agent event, for the test and the curious.
fn report(at: u64, event: &AgentEvent) {
    let mut line = Line::new();
    let line = line.s("[").n(at).s("] ");
    match event {
        AgentEvent::StateChanged { from, to, .. } => {
            line.s("state ").s(from.name()).s(" -> ").s(to.name())
        }
        AgentEvent::HealthChanged(h) => line.s("health ").s(h.name()),
        AgentEvent::ConfigApplied(v) => line.s("config ").n(*v).s(" applied"),
        AgentEvent::DesiredHandled {
            reached,
            rejected,
            pending,
        } => line
            .s("desired state applied (")
            .n(u64::from(*reached))
            .s(" reached, ")
            .n(u64::from(*rejected))
            .s(" rejected, ")
            .n(u64::from(*pending))
            .s(" pending)"),
        AgentEvent::CommandFinished(status) => line.s("command ").s(status.name()),
        AgentEvent::StorageFailed => line.s("storage failed"),
    }
    .print();
}
