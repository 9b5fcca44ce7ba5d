//! Adapters from embedded-hal 1.0 for an example board, and to the agent's
//! platform traits: an LED on an `OutputPin`, the Sensirion SHT3x
//! temperature/humidity sensor on `I2c`, a battery gauge from an ADC
//! reading, and a [`BoardProbe`] that turns them into health metrics and
//! telemetry. A board with other parts writes its own in the same way.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use embedded_hal::i2c::I2c;
use lanyard_core::agent::health::HealthMetrics;
use lanyard_core::agent::platform::{
    Args, CommandFailure, CommandHandler, Completion, HealthProbe, Readings, TelemetrySource,
};
use lanyard_core::shadow::{PathBuf, Value};

/// A temperature and humidity reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorReading {
    /// Temperature, °C.
    pub temperature_c: f32,
    /// Relative humidity, percent.
    pub humidity_pct: f32,
}

/// An LED on a GPIO pin; blinks block for `count * period_ms`.
pub struct Led<P, D> {
    pin: P,
    delay: D,
}

impl<P: OutputPin, D: DelayNs> Led<P, D> {
    /// The LED on `pin`, timed by `delay`.
    pub fn new(pin: P, delay: D) -> Self {
        Led { pin, delay }
    }
}

impl<P: OutputPin, D: DelayNs> Led<P, D> {
    /// Blinks `count` times, `period_ms` per blink (on for half of it).
    pub fn blink(&mut self, count: u32, period_ms: u32) {
        // A pin error leaves the LED as it is: blinking is best effort.
        for _ in 0..count {
            let _ = self.pin.set_high();
            self.delay.delay_ms(period_ms / 2);
            let _ = self.pin.set_low();
            self.delay.delay_ms(period_ms - period_ms / 2);
        }
    }
}

/// The example board's commands: `blink_led {count: 1..=100, period_ms:
/// 50..=5000 (500)}` through `blink`, and `read_sensor` (result
/// `{"temperature_c", "humidity_pct"}`) through `read`. Both finish before
/// they return. Other names are not the board's.
pub struct BoardCommands<B, R> {
    /// Blinks the LED `count` times, `period_ms` each.
    pub blink: B,
    /// Reads the sensor at `now_ms`; `None` when the read failed.
    pub read: R,
}

/// What `blink_led` takes, as a refusal says it.
pub const BLINK_ARGS: &str = "count: 1 to 100, period_ms: 50 to 5000";

/// The arguments of `blink_led`: `(count, period_ms)`.
pub fn blink_args(args: Args<'_>) -> Result<(u32, u32), CommandFailure> {
    let count = args.u64("count")?.ok_or(CommandFailure::BadArguments)?;
    let period = args.u64("period_ms")?.unwrap_or(500);
    if !(1..=100).contains(&count) || !(50..=5_000).contains(&period) {
        return Err(CommandFailure::BadArguments);
    }
    Ok((count as u32, period as u32))
}

impl<B: FnMut(u32, u32), R: FnMut(u64) -> Option<SensorReading>> CommandHandler
    for BoardCommands<B, R>
{
    fn execute(
        &mut self,
        now_ms: u64,
        name: &str,
        args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        match name {
            "blink_led" => Some(match blink_args(args) {
                Ok((count, period)) => {
                    (self.blink)(count, period);
                    Ok(Completion::Done(0))
                }
                // Said in the acknowledgement's detail.
                Err(CommandFailure::BadArguments) => {
                    Err(CommandFailure::bad_arguments_because(BLINK_ARGS, result))
                }
                Err(e) => Err(e),
            }),
            "read_sensor" => Some(match (self.read)(now_ms) {
                // 31 bytes: always fits an acknowledgement's result.
                Some(r) => lanyard_core::wire::encode_into(result, |e| {
                    e.map(2)?
                        .str("temperature_c")?
                        .f32(r.temperature_c)?
                        .str("humidity_pct")?
                        .f32(r.humidity_pct)?;
                    Ok(())
                })
                .map(Completion::Done)
                .map_err(|_| CommandFailure::Failed("result too large")),
                None => Err(CommandFailure::Failed("sensor read failed")),
            }),
            _ => None,
        }
    }
}

/// Why a sensor read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorError<E> {
    /// The bus failed.
    Bus(E),
    /// A word's checksum did not match: the reading is not used.
    Crc,
}

/// CRC-8 of the SHT3x (polynomial 0x31, init 0xFF), per its datasheet.
pub fn sht3x_crc(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Converts raw SHT3x words to °C and %RH (datasheet section 4.13).
pub fn sht3x_convert(raw_t: u16, raw_rh: u16) -> SensorReading {
    SensorReading {
        temperature_c: -45.0 + 175.0 * f32::from(raw_t) / 65535.0,
        humidity_pct: 100.0 * f32::from(raw_rh) / 65535.0,
    }
}

/// A Sensirion SHT30/31/35 on I2C.
pub struct Sht3x<I, D> {
    i2c: I,
    delay: D,
    address: u8,
}

/// Default I2C address (ADDR pin low).
pub const SHT3X_ADDRESS: u8 = 0x44;

impl<I: I2c, D: DelayNs> Sht3x<I, D> {
    /// The sensor at `address` on `i2c`.
    pub fn new(i2c: I, delay: D, address: u8) -> Self {
        Sht3x {
            i2c,
            delay,
            address,
        }
    }

    /// One single-shot measurement, high repeatability, no clock
    /// stretching (command 0x2400, at most 15.5 ms).
    pub fn measure(&mut self) -> Result<SensorReading, SensorError<I::Error>> {
        self.i2c
            .write(self.address, &[0x24, 0x00])
            .map_err(SensorError::Bus)?;
        self.delay.delay_ms(16);
        let mut b = [0u8; 6];
        self.i2c
            .read(self.address, &mut b)
            .map_err(SensorError::Bus)?;
        if sht3x_crc(&b[0..2]) != b[2] || sht3x_crc(&b[3..5]) != b[5] {
            return Err(SensorError::Crc);
        }
        Ok(sht3x_convert(
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[3], b[4]]),
        ))
    }
}

/// Something that reads the battery voltage, in millivolts (an ADC channel
/// behind a divider, a fuel gauge).
pub trait BatteryVoltage {
    /// The voltage now, or `None` if it could not be read.
    fn millivolts(&mut self) -> Option<u16>;
}

/// Battery percent from voltage, linear between `empty_mv` and `full_mv`
/// (a single Li-ion cell: 3 300 and 4 150 mV by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatteryCurve {
    /// 0 % at or below this.
    pub empty_mv: u16,
    /// 100 % at or above this.
    pub full_mv: u16,
}

impl Default for BatteryCurve {
    fn default() -> Self {
        BatteryCurve {
            empty_mv: 3_300,
            full_mv: 4_150,
        }
    }
}

impl BatteryCurve {
    /// Percent for `mv`.
    pub fn percent(&self, mv: u16) -> u8 {
        if mv <= self.empty_mv || self.full_mv <= self.empty_mv {
            return 0;
        }
        let span = u32::from(self.full_mv - self.empty_mv);
        (u32::from(mv - self.empty_mv).min(span) * 100 / span) as u8
    }
}

/// The board's [`HealthProbe`] and [`TelemetrySource`]: battery from a
/// gauge, sensors from a closure (an [`Sht3x`] or a model), failure counts
/// and data age kept here; telemetry is `temperature_c`, `humidity_pct`
/// and `battery_pct`. Link quality comes from the driver; the agent adds
/// its outbox's free space to `free_buffer_pct`.
pub struct BoardProbe<B, S> {
    battery: B,
    curve: BatteryCurve,
    sensor: S,
    failures: u32,
    last_good_ms: Option<u64>,
    /// Link quality the driver last measured, percent.
    pub link_quality_pct: u8,
    /// Free space of the platform's own buffers, percent.
    pub free_buffer_pct: u8,
    boot_ms: u64,
}

impl<B: BatteryVoltage, S: FnMut() -> Option<SensorReading>> BoardProbe<B, S> {
    /// A probe reading `battery` through `curve` and `sensor`, booted at
    /// `boot_ms`.
    pub fn new(battery: B, curve: BatteryCurve, sensor: S, boot_ms: u64) -> Self {
        BoardProbe {
            battery,
            curve,
            sensor,
            failures: 0,
            last_good_ms: None,
            link_quality_pct: 100,
            free_buffer_pct: 100,
            boot_ms,
        }
    }
}

impl<B: BatteryVoltage, S: FnMut() -> Option<SensorReading>> HealthProbe for BoardProbe<B, S> {
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: self
                .battery
                .millivolts()
                .map_or(0, |mv| self.curve.percent(mv)),
            link_quality_pct: self.link_quality_pct,
            sensor_failures: self.failures,
            data_age_ms: now_ms.saturating_sub(self.last_good_ms.unwrap_or(self.boot_ms)),
            free_buffer_pct: self.free_buffer_pct,
            uptime_ms: now_ms.saturating_sub(self.boot_ms),
        }
    }
}

impl<B: BatteryVoltage, S: FnMut() -> Option<SensorReading>> TelemetrySource for BoardProbe<B, S> {
    fn read(&mut self, now_ms: u64, readings: &mut Readings) -> bool {
        let Some(r) = self.read_sensors(now_ms) else {
            return false;
        };
        let battery = self.metrics(now_ms).battery_pct;
        board_readings(readings, r, battery)
    }
}

/// The example board's telemetry: `temperature_c`, `humidity_pct`,
/// `battery_pct`. Returns whether all three fit.
pub fn board_readings(readings: &mut Readings, r: SensorReading, battery_pct: u8) -> bool {
    let mut put = |key: &str, v: Value<'_>| {
        PathBuf::from_dotted(key).is_ok_and(|p| readings.insert(&p, v).is_ok())
    };
    put("temperature_c", Value::Float(f64::from(r.temperature_c)))
        && put("humidity_pct", Value::Float(f64::from(r.humidity_pct)))
        && put("battery_pct", Value::Int(i64::from(battery_pct)))
}

impl<B: BatteryVoltage, S: FnMut() -> Option<SensorReading>> BoardProbe<B, S> {
    /// Reads the sensor, counting failures and the age of the last good
    /// reading for health.
    pub fn read_sensors(&mut self, now_ms: u64) -> Option<SensorReading> {
        match (self.sensor)() {
            Some(r) => {
                self.failures = 0;
                self.last_good_ms = Some(now_ms);
                Some(r)
            }
            None => {
                self.failures = self.failures.saturating_add(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use embedded_hal::i2c::{ErrorKind, ErrorType, Operation};
    use std::vec::Vec;

    struct NoDelay(u32);
    impl DelayNs for NoDelay {
        fn delay_ns(&mut self, ns: u32) {
            self.0 += ns / 1_000_000;
        }
    }

    #[derive(Default)]
    struct Pin(Vec<bool>);
    impl embedded_hal::digital::ErrorType for Pin {
        type Error = Infallible;
    }
    impl OutputPin for Pin {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.0.push(true);
            Ok(())
        }
    }

    #[test]
    fn blinking_toggles_the_pin_for_the_whole_period() {
        let mut led = Led::new(Pin::default(), NoDelay(0));
        led.blink(3, 500);
        assert_eq!(led.pin.0, [true, false, true, false, true, false]);
        assert_eq!(led.delay.0, 1_500);
    }

    /// An SHT3x on a bus: answers the measure command with fixed words.
    struct FakeSht {
        reply: [u8; 6],
        writes: Vec<(u8, Vec<u8>)>,
    }
    impl ErrorType for FakeSht {
        type Error = ErrorKind;
    }
    impl I2c for FakeSht {
        fn transaction(&mut self, address: u8, ops: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
            if address != SHT3X_ADDRESS {
                return Err(ErrorKind::NoAcknowledge(
                    embedded_hal::i2c::NoAcknowledgeSource::Address,
                ));
            }
            for op in ops {
                match op {
                    Operation::Write(w) => self.writes.push((address, w.to_vec())),
                    Operation::Read(r) => r.copy_from_slice(&self.reply[..r.len()]),
                }
            }
            Ok(())
        }
    }

    #[test]
    fn the_sht3x_crc_matches_the_datasheet_example() {
        // Datasheet, section 4.12: CRC(0xBEEF) = 0x92.
        assert_eq!(sht3x_crc(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn sht3x_readings_convert_by_the_datasheet_formulas() {
        // raw 0x6666 = 26214: -45 + 175 * 0.4 = 25.0 °C; raw 0x8000: 50.0 %RH.
        let (t, rh) = ([0x66, 0x66], [0x80, 0x00]);
        let reply = [t[0], t[1], sht3x_crc(&t), rh[0], rh[1], sht3x_crc(&rh)];
        let mut s = Sht3x::new(
            FakeSht {
                reply,
                writes: Vec::new(),
            },
            NoDelay(0),
            SHT3X_ADDRESS,
        );
        let r = s.measure().unwrap();
        assert!((r.temperature_c - 25.0).abs() < 0.01, "{}", r.temperature_c);
        assert!((r.humidity_pct - 50.0).abs() < 0.01, "{}", r.humidity_pct);
        assert_eq!(s.i2c.writes, [(SHT3X_ADDRESS, std::vec![0x24, 0x00])]);
        assert!(s.delay.0 >= 16);
        // Extremes: raw 0 is -45 °C, raw 0xFFFF is 130 °C.
        assert_eq!(sht3x_convert(0, 0).temperature_c, -45.0);
        assert_eq!(sht3x_convert(0xFFFF, 0xFFFF).temperature_c, 130.0);
    }

    #[test]
    fn a_corrupted_word_is_refused_not_used() {
        let reply = [0x66, 0x66, 0x00, 0x80, 0x00, sht3x_crc(&[0x80, 0x00])];
        let mut s = Sht3x::new(
            FakeSht {
                reply,
                writes: Vec::new(),
            },
            NoDelay(0),
            SHT3X_ADDRESS,
        );
        assert_eq!(s.measure(), Err(SensorError::Crc));
        let mut wrong = Sht3x::new(
            FakeSht {
                reply,
                writes: Vec::new(),
            },
            NoDelay(0),
            0x45,
        );
        assert!(matches!(wrong.measure(), Err(SensorError::Bus(_))));
    }

    struct Mv(Option<u16>);
    impl BatteryVoltage for Mv {
        fn millivolts(&mut self) -> Option<u16> {
            self.0
        }
    }

    #[test]
    fn battery_percent_and_board_health() {
        let c = BatteryCurve::default();
        assert_eq!(
            (
                c.percent(3_000),
                c.percent(3_300),
                c.percent(3_725),
                c.percent(4_200)
            ),
            (0, 0, 50, 100)
        );
        let reading = SensorReading {
            temperature_c: 20.0,
            humidity_pct: 40.0,
        };
        let mut p = BoardProbe::new(Mv(Some(3_385)), c, || Some(reading), 1_000);
        assert_eq!(p.metrics(2_000).battery_pct, 10);
        assert!(p.read_sensors(5_000).is_some());
        assert_eq!(p.metrics(6_000).data_age_ms, 1_000);
        // A failing sensor and an unreadable battery.
        let mut p = BoardProbe::new(Mv(None), c, || None, 0);
        assert!(p.read_sensors(10).is_none());
        assert!(p.read_sensors(20).is_none());
        let m = p.metrics(30);
        assert_eq!(
            (m.sensor_failures, m.battery_pct, m.data_age_ms),
            (2, 0, 30)
        );
    }
}
