//! Firmware updates on the device: an image downloaded out of order with
//! duplicates, resumed after a reboot without asking again for what it
//! has, verified, booted on trial, confirmed or rolled back; and each bad
//! input refused with its reason, the running image untouched.

use lanyard_core::update::messages::{
    Block, BlockRequest, MANIFEST_MAX, UpdateJob, UpdateReason, UpdateReport, UpdateState,
};
use lanyard_core::update::{
    Offer, RECORD_MAX, Running, SlotError, Stored, Taken, UpdateSession, UpdateSlot, Updater,
    WINDOW, sha256,
};

/// An inactive slot in RAM with a bootloader's flags.
#[derive(Default)]
struct RamSlot {
    bytes: Vec<u8>,
    trial: bool,
    confirmed: bool,
    reverted: bool,
    writes: usize,
}

impl UpdateSlot for RamSlot {
    fn capacity(&self) -> u32 {
        64 * 1024
    }
    fn erase(&mut self) -> Result<(), SlotError> {
        self.bytes = vec![0xff; 64 * 1024];
        Ok(())
    }
    fn write(&mut self, at: u32, data: &[u8]) -> Result<(), SlotError> {
        self.writes += 1;
        self.bytes[at as usize..at as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn read(&mut self, at: u32, buf: &mut [u8]) -> Result<(), SlotError> {
        buf.copy_from_slice(&self.bytes[at as usize..at as usize + buf.len()]);
        Ok(())
    }
    fn mark_trial(&mut self) -> Result<(), SlotError> {
        self.trial = true;
        Ok(())
    }
    fn confirm(&mut self) -> Result<(), SlotError> {
        self.confirmed = true;
        Ok(())
    }
    fn revert(&mut self) -> Result<(), SlotError> {
        self.reverted = true;
        Ok(())
    }
}

fn key(seed: u8) -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A job for `image` as `version`, signed by `signer`.
fn job<'a>(image: &[u8], version: &'a str, signer: &ed25519_compact::KeyPair) -> UpdateJob<'a> {
    let mut job = UpdateJob {
        job_id: "job-7",
        version,
        size: image.len() as u32,
        sha256: sha256(image),
        signature: [0; 64],
        block_size: 512,
        allow_downgrade: false,
        force: false,
    };
    let mut manifest = [0u8; MANIFEST_MAX];
    let n = job.manifest(&mut manifest).unwrap();
    job.signature = *signer.sk.sign(&manifest[..n], None);
    job
}

const RUNNING: Offer<'static> = Offer {
    running_version: "1.4.2",
    slot_capacity: 64 * 1024,
    degraded: false,
};

fn blocks_of(image: &[u8]) -> Vec<&[u8]> {
    image.chunks(512).collect()
}

#[test]
fn an_image_downloaded_out_of_order_is_verified_booted_on_trial_and_confirmed() {
    let fleet = key(1);
    let img = image(5_000);
    let job = job(&img, "1.5.0", &fleet);
    // The job travels as CBOR and reads back the same.
    let mut wire = [0u8; 256];
    let n = job.encode(&mut wire).unwrap();
    assert_eq!(UpdateJob::decode(&wire[..n]).unwrap(), job);

    let mut up = Updater::new(*fleet.pk);
    let mut slot = RamSlot::default();
    up.offer(&job, RUNNING).unwrap();
    slot.erase().unwrap();
    let blocks = blocks_of(&img);
    assert_eq!(blocks.len(), 10);
    // Last first, one twice.
    for &i in &[9usize, 3, 0, 3, 1, 2, 4, 5, 6, 7] {
        let got = up
            .block(
                &Block {
                    job_id: "job-7",
                    index: i as u32,
                    data: blocks[i],
                },
                &mut slot,
            )
            .unwrap();
        assert_ne!(got, Stored::Complete);
    }
    assert_eq!(
        up.block(
            &Block {
                job_id: "job-7",
                index: 8,
                data: blocks[8]
            },
            &mut slot
        ),
        Ok(Stored::Complete)
    );
    assert_eq!(slot.writes, 10, "the duplicate was not written");
    assert_eq!(up.state(), Some(UpdateState::Verifying));
    up.verify(&mut slot, &mut [0u8; 300]).unwrap();
    assert_eq!(up.state(), Some(UpdateState::Verified));
    assert!(slot.trial);

    // The restart, through the record: running the trial image.
    let mut record = [0u8; RECORD_MAX];
    let n = up.save(&mut record).unwrap();
    let mut after = Updater::new(*fleet.pk);
    after.resume(&record[..n]).unwrap();
    after.booted(true);
    assert_eq!(after.state(), Some(UpdateState::Testing));
    after.self_test(true, &mut slot).unwrap();
    assert_eq!(after.state(), Some(UpdateState::Accepted));
    assert!(slot.confirmed && !slot.reverted);
    let report = after.report(99).unwrap();
    assert_eq!(
        (report.state, report.received, report.total, report.reason),
        (UpdateState::Accepted, 10, 10, None)
    );
    let mut out = [0u8; 64];
    let n = report.encode(&mut out).unwrap();
    assert_eq!(UpdateReport::decode(&out[..n]).unwrap(), report);

    // Offered again (its report was lost, or a rollout went on after a
    // restart): nothing changes, and it is reported again, not refused as
    // a downgrade.
    let now_running = Offer {
        running_version: "1.5.0",
        ..RUNNING
    };
    let writes = slot.writes;
    assert_eq!(after.offer(&job, now_running), Ok(Taken::Finished));
    assert_eq!(after.state(), Some(UpdateState::Accepted));
    assert_eq!(slot.writes, writes);
}

#[test]
fn a_reboot_mid_download_resumes_without_asking_again_for_what_it_has() {
    let fleet = key(2);
    let img = image(16 * 512);
    let job = job(&img, "2.0.0", &fleet);
    let blocks = blocks_of(&img);
    let mut up = Updater::new(*fleet.pk);
    let mut slot = RamSlot::default();
    up.offer(&job, RUNNING).unwrap();
    slot.erase().unwrap();
    let mut sent = vec![0usize; blocks.len()];
    let mut want = [0u32; WINDOW];
    let mut record = [0u8; RECORD_MAX];
    let mut saved = 0;
    // Ask and receive until half is in, saving after every block.
    while slot.writes < 8 {
        let n = up.wanted(0, &mut want);
        assert!(n > 0);
        for &i in &want[..n] {
            sent[i as usize] += 1;
            up.block(
                &Block {
                    job_id: "job-7",
                    index: i,
                    data: blocks[i as usize],
                },
                &mut slot,
            )
            .unwrap();
            saved = up.save(&mut record).unwrap();
        }
    }
    // Power cut: the in-memory updater is gone; the record and the slot
    // stay.
    let mut up = Updater::new(*fleet.pk);
    up.resume(&record[..saved]).unwrap();
    assert_eq!(up.state(), Some(UpdateState::Downloading));
    assert_eq!(up.offer(&job, RUNNING), Ok(Taken::Resumed)); // kept as it stands
    let mut t = 10_000;
    loop {
        let n = up.wanted(t, &mut want);
        if n == 0 {
            break;
        }
        for &i in &want[..n] {
            sent[i as usize] += 1;
            if up
                .block(
                    &Block {
                        job_id: "job-7",
                        index: i,
                        data: blocks[i as usize],
                    },
                    &mut slot,
                )
                .unwrap()
                == Stored::Complete
            {
                break;
            }
        }
        t += 1;
    }
    assert_eq!(sent, vec![1; blocks.len()], "a block was asked for twice");
    up.verify(&mut slot, &mut [0u8; 512]).unwrap();
}

#[test]
fn a_block_that_does_not_come_is_asked_again_after_its_timeout() {
    let fleet = key(3);
    let img = image(3 * 512);
    let job = job(&img, "1.5.0", &fleet);
    let mut up = Updater::new(*fleet.pk);
    up.offer(&job, RUNNING).unwrap();
    let mut want = [0u32; WINDOW];
    let n = up.wanted(0, &mut want);
    assert_eq!(&want[..n], &[0, 1, 2]);
    // Nothing new while they are in flight; all three again once late.
    assert_eq!(up.wanted(1_000, &mut want), 0);
    let n = up.wanted(lanyard_core::update::BLOCK_TIMEOUT_MS, &mut want);
    let mut again = want[..n].to_vec();
    again.sort();
    assert_eq!(again, [0, 1, 2]);
    // Requests travel as CBOR.
    let req = BlockRequest {
        job_id: "job-7",
        first: 2,
        count: 1,
    };
    let mut out = [0u8; 32];
    let n = req.encode(&mut out).unwrap();
    assert_eq!(BlockRequest::decode(&out[..n]).unwrap(), req);
}

/// Downloads `img` under `job` and verifies it; the verdict.
fn download(
    up: &mut Updater,
    slot: &mut RamSlot,
    job: &UpdateJob<'_>,
    img: &[u8],
) -> Result<(), UpdateReason> {
    up.offer(job, RUNNING)?;
    slot.erase().unwrap();
    for (i, b) in blocks_of(img).into_iter().enumerate() {
        up.block(
            &Block {
                job_id: job.job_id,
                index: i as u32,
                data: b,
            },
            slot,
        )?;
    }
    up.verify(slot, &mut [0u8; 256])
}

#[test]
fn tampered_unsigned_foreign_truncated_and_older_images_are_refused_and_nothing_boots() {
    let fleet = key(4);
    let img = image(2_000);

    // A block changed on its way.
    let mut tampered = img.clone();
    tampered[700] ^= 1;
    let (mut up, mut slot) = (Updater::new(*fleet.pk), RamSlot::default());
    assert_eq!(
        download(&mut up, &mut slot, &job(&img, "1.5.0", &fleet), &tampered),
        Err(UpdateReason::DigestMismatch)
    );
    assert_eq!(
        (up.state(), up.reason()),
        (
            Some(UpdateState::Rejected),
            Some(UpdateReason::DigestMismatch)
        )
    );
    assert!(!slot.trial);

    // A signature that is not of this manifest (the version changed after
    // signing).
    let mut forged = job(&img, "1.5.0", &fleet);
    forged.version = "9.9.9";
    let (mut up, mut slot) = (Updater::new(*fleet.pk), RamSlot::default());
    assert_eq!(
        download(&mut up, &mut slot, &forged, &img),
        Err(UpdateReason::BadSignature)
    );
    assert!(!slot.trial);

    // Signed with another key.
    let (mut up, mut slot) = (Updater::new(*fleet.pk), RamSlot::default());
    assert_eq!(
        download(&mut up, &mut slot, &job(&img, "1.5.0", &key(5)), &img),
        Err(UpdateReason::BadSignature)
    );
    assert!(!slot.trial);

    // Truncated: a last block shorter than the job says, or one past the
    // end: refused, nothing written, the download goes on.
    let (mut up, mut slot) = (Updater::new(*fleet.pk), RamSlot::default());
    let good = job(&img, "1.5.0", &fleet);
    up.offer(&good, RUNNING).unwrap();
    slot.erase().unwrap();
    let last = &img[1536..1990];
    assert_eq!(
        up.block(
            &Block {
                job_id: "job-7",
                index: 3,
                data: last
            },
            &mut slot
        ),
        Err(UpdateReason::BadBlock)
    );
    assert_eq!(
        up.block(
            &Block {
                job_id: "job-7",
                index: 4,
                data: &img[..10]
            },
            &mut slot
        ),
        Err(UpdateReason::BadBlock)
    );
    assert_eq!(slot.writes, 0);
    assert_eq!(up.state(), Some(UpdateState::Downloading));
    // Another job's block is not this one's.
    assert_eq!(
        up.block(
            &Block {
                job_id: "job-8",
                index: 0,
                data: &img[..512]
            },
            &mut slot
        ),
        Ok(Stored::OtherJob)
    );

    // Older, or the same version: refused before anything is downloaded,
    // unless the job allows it.
    let mut up = Updater::new(*fleet.pk);
    assert_eq!(
        up.offer(&job(&img, "1.4.2", &fleet), RUNNING),
        Err(UpdateReason::Downgrade)
    );
    assert_eq!(
        up.offer(&job(&img, "1.3.9", &fleet), RUNNING),
        Err(UpdateReason::Downgrade)
    );
    let mut allowed = job(&img, "1.3.9", &fleet);
    allowed.allow_downgrade = true;
    assert_eq!(up.offer(&allowed, RUNNING), Ok(Taken::Started));

    // Too large for the slot, or degraded without force.
    let mut up = Updater::new(*fleet.pk);
    let small = Offer {
        slot_capacity: 1_000,
        ..RUNNING
    };
    assert_eq!(
        up.offer(&job(&img, "1.5.0", &fleet), small),
        Err(UpdateReason::TooLarge)
    );
    let degraded = Offer {
        degraded: true,
        ..RUNNING
    };
    assert_eq!(
        up.offer(&job(&img, "1.5.0", &fleet), degraded),
        Err(UpdateReason::Degraded)
    );
    let mut forced = job(&img, "1.5.0", &fleet);
    forced.force = true;
    assert_eq!(up.offer(&forced, degraded), Ok(Taken::Started));
    // One job at a time.
    let mut other = job(&img, "1.6.0", &fleet);
    other.job_id = "job-9";
    assert_eq!(up.offer(&other, RUNNING), Err(UpdateReason::Busy));
}

#[test]
fn a_failed_self_test_or_a_restart_before_confirming_brings_the_old_image_back() {
    let fleet = key(6);
    let img = image(1_024);
    let (mut up, mut slot) = (Updater::new(*fleet.pk), RamSlot::default());
    download(&mut up, &mut slot, &job(&img, "1.5.0", &fleet), &img).unwrap();
    let mut record = [0u8; RECORD_MAX];
    let n = up.save(&mut record).unwrap();

    let mut failing = Updater::new(*fleet.pk);
    failing.resume(&record[..n]).unwrap();
    failing.booted(true);
    failing.self_test(false, &mut slot).unwrap();
    assert_eq!(
        (failing.state(), failing.reason()),
        (
            Some(UpdateState::Rejected),
            Some(UpdateReason::SelfTestFailed)
        )
    );
    assert!(slot.reverted && !slot.confirmed);
    // Offered again, it stays rejected, for the same reason.
    assert_eq!(
        failing.offer(&job(&img, "1.5.0", &fleet), RUNNING),
        Ok(Taken::Finished)
    );
    assert_eq!(failing.reason(), Some(UpdateReason::SelfTestFailed));

    // A cancelled job offered again starts over.
    let mut cancelled = Updater::new(*fleet.pk);
    assert_eq!(
        cancelled.offer(&job(&img, "1.5.0", &fleet), RUNNING),
        Ok(Taken::Started)
    );
    cancelled.cancel("job-7");
    assert_eq!(cancelled.state(), Some(UpdateState::Aborted));
    assert_eq!(
        cancelled.offer(&job(&img, "1.5.0", &fleet), RUNNING),
        Ok(Taken::Started)
    );

    // The new image hung and the watchdog restarted it: the bootloader
    // ran the old one.
    let mut hung = Updater::new(*fleet.pk);
    hung.resume(&record[..n]).unwrap();
    hung.booted(true);
    let n2 = hung.save(&mut record).unwrap();
    let mut after = Updater::new(*fleet.pk);
    after.resume(&record[..n2]).unwrap();
    after.booted(false);
    assert_eq!(
        (after.state(), after.reason()),
        (
            Some(UpdateState::Rejected),
            Some(UpdateReason::ResetBeforeConfirm)
        )
    );
}

#[test]
fn records_and_messages_that_do_not_read_change_nothing() {
    let fleet = key(7);
    let img = image(1_500);
    let job = job(&img, "1.5.0", &fleet);
    let mut up = Updater::new(*fleet.pk);
    up.offer(&job, RUNNING).unwrap();
    let mut slot = RamSlot::default();
    slot.erase().unwrap();
    up.block(
        &Block {
            job_id: "job-7",
            index: 1,
            data: &img[512..1024],
        },
        &mut slot,
    )
    .unwrap();
    let mut record = [0u8; RECORD_MAX];
    let n = up.save(&mut record).unwrap();
    // Every truncation and a flipped byte anywhere: refused or read as a
    // consistent record, never a panic; a refused one leaves the updater
    // as it was.
    for cut in 0..n {
        let mut other = Updater::new(*fleet.pk);
        if other.resume(&record[..cut]).is_ok() {
            panic!("a record cut at {cut} of {n} was taken");
        }
        assert_eq!(other.state(), None);
    }
    for at in 0..n {
        let mut damaged = record[..n].to_vec();
        damaged[at] ^= 0x40;
        let mut other = Updater::new(*fleet.pk);
        let _ = other.resume(&damaged);
    }
    // Found by the fuzzer: a record whose block size makes more blocks
    // than the bitmap holds (61,047 bytes in blocks of 5).
    let mut other = Updater::new(*fleet.pk);
    let found = hex(concat!(
        "a900656a6f622d310165312e352e300219ee7703582000000000000000000000000000000000",
        "000000000000feff00000000000000000458400000000000000000000000000080000000000000",
        "656a6f629dffffff312e352e300219138803000000000000000000000000000000000005190200",
        "050505050505050642450007020801"
    ));
    assert!(other.resume(&found).is_err());
    assert_eq!(other.state(), None);
    assert!(UpdateJob::decode(&[0xa0]).is_err());
    assert!(Block::decode(&[0xa1, 0x00, 0x61, 0x6a]).is_err());
    let mut wire = [0u8; 256];
    let n = job.encode(&mut wire).unwrap();
    assert!(UpdateJob::decode(&wire[..n - 1]).is_err());
}

/// Everything the session has to send at `now`, and the records it asked
/// to save on the way (the last one kept in `saved`).
fn drain(
    s: &mut UpdateSession<RamSlot>,
    now: u64,
    saved: &mut Vec<u8>,
) -> Vec<(lanyard_core::update::messages::UpdateTopic, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; RECORD_MAX];
    loop {
        if let Some(n) = s.take_record(&mut buf) {
            *saved = buf[..n.unwrap()].to_vec();
        }
        match s.poll_transmit(now, &mut buf).unwrap() {
            Some((t, n)) => out.push((t, buf[..n].to_vec())),
            None => return out,
        }
    }
}

/// The running version the session tests offer jobs to.
const RUNNING_SESSION: Running<'static> = Running {
    version: "1.4.2",
    degraded: false,
};

/// A new session on a RAM slot offered `job`: the session, what it sent
/// and the record it saved.
#[allow(clippy::type_complexity)]
fn offered(
    fleet: &ed25519_compact::KeyPair,
    job: &UpdateJob<'_>,
) -> (
    UpdateSession<RamSlot>,
    Vec<(lanyard_core::update::messages::UpdateTopic, Vec<u8>)>,
    Vec<u8>,
) {
    let mut wire = [0u8; 1024];
    let n = job.encode(&mut wire).unwrap();
    let mut saved = Vec::new();
    let mut s = UpdateSession::new(*fleet.pk, RamSlot::default());
    s.handle(
        lanyard_core::update::messages::UpdateTopic::Job,
        &wire[..n],
        RUNNING_SESSION,
    )
    .unwrap();
    let sent = drain(&mut s, 1_000, &mut saved);
    (s, sent, saved)
}

#[test]
fn a_session_answers_a_job_with_requests_and_a_restart_resumes_the_download() {
    use lanyard_core::update::messages::UpdateTopic;
    let fleet = key(4);
    let img = image(4_000); // 8 blocks of 512
    let job = job(&img, "1.5.0", &fleet);
    let running = RUNNING_SESSION;
    let (mut s, sent, mut saved) = offered(&fleet, &job);
    // The report (downloading), then a window of requests.
    assert_eq!(sent[0].0, UpdateTopic::Report);
    let report = UpdateReport::decode(&sent[0].1).unwrap();
    assert_eq!(
        (report.state, report.received, report.total),
        (UpdateState::Downloading, 0, 8)
    );
    let asked: Vec<u32> = sent[1..]
        .iter()
        .map(|(t, b)| {
            assert_eq!(*t, UpdateTopic::Request);
            BlockRequest::decode(b).unwrap().first
        })
        .collect();
    assert_eq!(asked.len(), WINDOW);
    assert!(
        !saved.is_empty(),
        "the record is saved once the job is taken"
    );
    assert_eq!(s.poll_timeout(), Some(1_000 + 5_000));

    // Two blocks arrive; the device restarts.
    let send_block = |s: &mut UpdateSession<RamSlot>, i: u32| {
        let mut wire = [0u8; 1024];
        let b = Block {
            job_id: "job-7",
            index: i,
            data: blocks_of(&img)[i as usize],
        };
        let m = b.encode(&mut wire).unwrap();
        s.handle(UpdateTopic::Block, &wire[..m], running).unwrap();
    };
    for &i in &asked[..2] {
        send_block(&mut s, i);
    }
    drain(&mut s, 1_100, &mut saved);
    let slot = std::mem::take(s.slot_mut());
    let mut s = UpdateSession::new(*fleet.pk, slot);
    s.resume(&saved).unwrap();
    s.boot(false, || unreachable!("not on trial"));
    let sent = drain(&mut s, 2_000, &mut saved);
    let report = UpdateReport::decode(&sent[0].1).unwrap();
    assert_eq!(
        (report.state, report.received),
        (UpdateState::Downloading, 2)
    );
    // What it asks now are blocks it does not have.
    let mut have: Vec<u32> = asked[..2].to_vec();
    let mut pending: Vec<u32> = sent[1..]
        .iter()
        .map(|(_, b)| BlockRequest::decode(b).unwrap().first)
        .collect();
    assert!(pending.iter().all(|i| !have.contains(i)));
    // Serve every request until the image is in; nothing is asked twice.
    let mut restart = false;
    let mut reports = Vec::new();
    while let Some(i) = pending.pop() {
        assert!(!have.contains(&i), "block {i} asked twice");
        have.push(i);
        send_block(&mut s, i);
        for (t, bytes) in drain(&mut s, 2_100, &mut saved) {
            match t {
                UpdateTopic::Request => pending.push(BlockRequest::decode(&bytes).unwrap().first),
                _ => reports.push(UpdateReport::decode(&bytes).unwrap().state),
            }
        }
        restart |= s.take_restart();
    }
    assert_eq!(have.len(), 8);
    assert_eq!(reports, [UpdateState::Verifying, UpdateState::Verified]);
    assert!(restart, "a verified image asks for the restart");
    assert!(s.slot_mut().trial);

    // The trial boot: the self-test fails, the slot is reverted, and a
    // restart back to the old image is due.
    let slot = std::mem::take(s.slot_mut());
    let mut s = UpdateSession::new(*fleet.pk, slot);
    s.resume(&saved).unwrap();
    s.boot(true, || false);
    let sent = drain(&mut s, 3_000, &mut saved);
    let report = UpdateReport::decode(&sent[0].1).unwrap();
    assert_eq!(
        (report.state, report.reason),
        (UpdateState::Rejected, Some(UpdateReason::SelfTestFailed))
    );
    assert!(s.take_restart());
    assert!(s.slot_mut().reverted);
}

#[test]
fn a_session_reports_a_refused_job_and_refuses_what_does_not_read() {
    use lanyard_core::update::messages::UpdateTopic;
    let fleet = key(5);
    let img = image(1_000);
    let job = job(&img, "1.0.0", &fleet); // older than the running one
    let mut wire = [0u8; 512];
    let running = RUNNING_SESSION;
    let (mut s, sent, mut saved) = offered(&fleet, &job);
    assert_eq!(sent.len(), 1);
    let report = UpdateReport::decode(&sent[0].1).unwrap();
    assert_eq!(
        (report.job_id, report.state, report.reason),
        (
            "job-7",
            UpdateState::Rejected,
            Some(UpdateReason::Downgrade)
        )
    );
    assert!(saved.is_empty(), "a refused job keeps no record");
    // Blocks larger than the device's link carries: refused as such.
    let newer = self::job(&img, "2.0.0", &fleet);
    let n = newer.encode(&mut wire).unwrap();
    let mut small = UpdateSession::new(*fleet.pk, RamSlot::default()).with_max_block_size(256);
    small.handle(UpdateTopic::Job, &wire[..n], running).unwrap();
    let sent = drain(&mut small, 1, &mut saved);
    assert_eq!(
        UpdateReport::decode(&sent[0].1).unwrap().reason,
        Some(UpdateReason::BadBlock)
    );
    assert_eq!(s.slot_mut().bytes.len(), 0, "nor touches the slot");
    // Bytes that are no job, and a topic only devices send.
    assert!(s.handle(UpdateTopic::Job, &[0xff, 0x00], running).is_err());
    assert!(s.handle(UpdateTopic::Report, &[0xa0], running).is_err());
    assert!(drain(&mut s, 2, &mut saved).is_empty());
    assert!(s.updater().state().is_none());
}
