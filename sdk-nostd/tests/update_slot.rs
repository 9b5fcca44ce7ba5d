//! A firmware update into a flash slot, with the power cut at every write
//! of the download and of the slot's trailer: the device resumes from its
//! last saved record, writes what was cut again, and ends with the image
//! verified and the bootloader asked for a trial boot (or, cut during the
//! trailer's write, asked nothing: the old image runs).

use lanyard_core::update::messages::{Block, MANIFEST_MAX, UpdateJob, UpdateState};
use lanyard_core::update::{Offer, RECORD_MAX, Stored, UpdateSlot, Updater, sha256};
use lanyard_nostd::flash::RamFlash;
use lanyard_nostd::update_slot::{BootRequest, FlashSlot};

/// 8 KiB of image and a 1 KiB trailer sector.
type Flash = RamFlash<{ 9 * 1024 }>;
const SIZE: u32 = 8 * 1024;

fn signed_job(image: &[u8], key: &ed25519_compact::KeyPair) -> UpdateJob<'static> {
    let mut job = UpdateJob {
        job_id: "fw-2",
        version: "2.0.0",
        size: image.len() as u32,
        sha256: sha256(image),
        signature: [0; 64],
        block_size: 256,
        allow_downgrade: false,
        force: false,
    };
    let mut m = [0u8; MANIFEST_MAX];
    let n = job.manifest(&mut m).unwrap();
    job.signature = *key.sk.sign(&m[..n], None);
    job
}

const RUNNING: Offer<'static> = Offer {
    running_version: "1.0.0",
    slot_capacity: SIZE,
    degraded: false,
};

/// Runs the update to its end on `flash`, saving the record after each
/// block and resuming from `record` (the device's last saved one), as a
/// device would after a reboot. `Err` when the power went.
fn run(
    flash: Flash,
    record: &mut Vec<u8>,
    image: &[u8],
    job: &UpdateJob<'_>,
    key: [u8; 32],
) -> (Flash, Result<(), ()>) {
    let mut slot = FlashSlot::new(flash, 0, SIZE, 1024);
    let mut up = Updater::new(key);
    if record.is_empty() {
        up.offer(job, RUNNING).unwrap();
        if slot.erase().is_err() {
            return (slot.release(), Err(()));
        }
        let mut out = [0u8; RECORD_MAX];
        let n = up.save(&mut out).unwrap();
        *record = out[..n].to_vec();
    } else {
        up.resume(record).unwrap();
    }
    let mut want = [0u32; lanyard_core::update::WINDOW];
    let mut now = 0;
    while up.state() == Some(UpdateState::Downloading) {
        now += lanyard_core::update::BLOCK_TIMEOUT_MS;
        let n = up.wanted(now, &mut want);
        for &i in &want[..n] {
            let data = &image[i as usize * 256..((i as usize + 1) * 256).min(image.len())];
            match up.block(
                &Block {
                    job_id: job.job_id,
                    index: i,
                    data,
                },
                &mut slot,
            ) {
                Ok(Stored::Progress { .. } | Stored::Complete) => {
                    let mut out = [0u8; RECORD_MAX];
                    let n = up.save(&mut out).unwrap();
                    *record = out[..n].to_vec();
                }
                Ok(_) => {}
                Err(_) => return (slot.release(), Err(())),
            }
        }
    }
    if up.state() == Some(UpdateState::Verifying) && up.verify(&mut slot, &mut [0u8; 200]).is_err()
    {
        return (slot.release(), Err(()));
    }
    assert_eq!(up.state(), Some(UpdateState::Verified));
    (slot.release(), Ok(()))
}

#[test]
fn power_cuts_at_every_write_end_with_the_image_verified_or_nothing_asked() {
    let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([3; 32]));
    // Not a whole number of blocks, nor of flash words.
    let image: Vec<u8> = (0..7_001u32).map(|i| (i * 7 % 253) as u8).collect();
    let job = signed_job(&image, &key);

    // How many bytes an uncut run writes.
    let (flash, done) = run(Flash::new(), &mut Vec::new(), &image, &job, *key.pk);
    done.unwrap();
    let total = flash.written();
    assert!(total >= image.len());

    for cut in (0..total).step_by(61).chain([total - 1]) {
        let mut flash = Flash::new();
        // Each attempt's cut point moves on; the flash and the record stay.
        flash.cut_power_after(Some(cut));
        let mut record = Vec::new();
        let (mut flash, first) = run(flash, &mut record, &image, &job, *key.pk);
        assert!(first.is_err(), "cut at {cut} of {total} went unnoticed");
        flash.cut_power_after(None);
        // The reboot: from the last record saved (none: the offer again).
        let (flash, second) = run(flash, &mut record, &image, &job, *key.pk);
        second.unwrap_or_else(|()| panic!("cut at {cut}: the resumed update failed"));
        // The image in the slot is the image.
        let mut slot = FlashSlot::new(flash, 0, SIZE, 1024);
        let mut back = vec![0u8; image.len()];
        slot.read(0, &mut back).unwrap();
        assert_eq!(back, image, "cut at {cut}");
        assert_eq!(slot.boot_request().unwrap(), BootRequest::Trial);
    }
}

#[test]
fn a_trailer_word_cut_by_the_power_asks_nothing_of_the_bootloader() {
    let mut slot = FlashSlot::new(Flash::new(), 0, SIZE, 1024);
    slot.erase().unwrap();
    assert_eq!(slot.boot_request().unwrap(), BootRequest::None);
    // Two bytes of the trial word written, then the power went.
    slot.flash_mut().cut_power_after(Some(2));
    assert!(slot.mark_trial().is_err());
    slot.flash_mut().cut_power_after(None);
    assert_eq!(slot.boot_request().unwrap(), BootRequest::None);
    // Confirmed wins over trial; reverted over both.
    let mut slot = FlashSlot::new(Flash::new(), 0, SIZE, 1024);
    slot.erase().unwrap();
    slot.mark_trial().unwrap();
    assert_eq!(slot.boot_request().unwrap(), BootRequest::Trial);
    slot.confirm().unwrap();
    assert_eq!(slot.boot_request().unwrap(), BootRequest::Confirmed);
    slot.revert().unwrap();
    assert_eq!(slot.boot_request().unwrap(), BootRequest::Reverted);
    // Writes past the image area are refused (the trailer is not image).
    assert!(slot.write(SIZE - 2, &[1, 2, 3, 4]).is_err());
}
