//! A malformed-packet storm: a million valid, mutated and random frames
//! through the loaded classifier. The kernel's verdict must equal the host's
//! `classify` on every frame, the counters must account for every frame, and
//! no frame may be parked, forwarded or dropped for a service it does not
//! belong to.

use std::{collections::BTreeMap, time::Instant};

use migr_common::{
    classify::CLASSIFY_REASONS,
    maps::{ProtoClass, Reason, Verdict},
};
use migr_testkit::corpus::*;
use migr_user::datapath::MAIN_PROGRAM;

const FRAMES: usize = 1_000_000;

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = 14 + rng.below(600) as usize;
    let mut frame: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    // Half of them claim to be IP, so the parsers get past Ethernet.
    match rng.below(4) {
        0 => frame[12..14].copy_from_slice(&[0x08, 0x00]),
        1 => frame[12..14].copy_from_slice(&[0x86, 0xdd]),
        _ => {}
    }
    frame
}

#[test]
fn a_million_hostile_frames_match_the_host_and_are_all_counted() {
    let mut f = fixture();
    let mut rng = Rng(0x5707_2024_0001);
    let mut expected: BTreeMap<(u32, usize), u64> = BTreeMap::new();
    let mut want_reasons = [0u64; Reason::COUNT as usize];
    let mut want_classes = [0u64; ProtoClass::COUNT as usize];
    let started = Instant::now();
    let (mut valid, mut mutated, mut random) = (0u64, 0u64, 0u64);
    for i in 0..FRAMES {
        let frame = match i % 5 {
            0 | 1 => {
                valid += 1;
                valid_frame(&mut rng)
            }
            2 | 3 => {
                mutated += 1;
                let mut frame = valid_frame(&mut rng);
                mutate(&mut rng, &mut frame);
                frame
            }
            _ => {
                random += 1;
                random_frame(&mut rng)
            }
        };
        let c = f.classify(&frame);
        let want = f.expect(&frame);
        let got = f.dp.test_run(MAIN_PROGRAM, &frame).expect("test_run");
        assert_eq!(got.action, want.action, "frame {i}: {frame:02x?}");
        assert_eq!(got.frame_out, want.frame_out, "frame {i}: {frame:02x?}");
        *expected
            .entry((want.service_id, want.verdict as usize))
            .or_insert(0) += 1;
        for r in CLASSIFY_REASONS {
            want_reasons[r as usize] += u64::from(c.reasons.contains(r));
        }
        want_classes[c.proto_class() as usize] += 1;
        f.learn(&c);
        if i % 5000 == 4999 {
            f.dp.drain_parked().unwrap();
            f.dp.drain_events().unwrap();
        }
    }
    let elapsed = started.elapsed();

    // Every frame is in exactly one (service, verdict) counter, the one the host expects.
    let mut counted = 0u64;
    for svc in ALL {
        let counters = f.dp.service_counters(svc).unwrap();
        for v in Verdict::ALL {
            let got = counters.packets[v as usize];
            let want = expected.get(&(svc, v as usize)).copied().unwrap_or(0);
            assert_eq!(got, want, "service {svc} verdict {}", v.name());
            counted += got;
        }
    }
    assert_eq!(counted, FRAMES as u64, "every frame is counted once");
    let reasons = f.dp.reasons().unwrap();
    // The reasons and protocol classes the classification gives, counted once per frame.
    for r in CLASSIFY_REASONS {
        assert_eq!(
            reasons[r as usize],
            want_reasons[r as usize],
            "reason {}",
            r.name()
        );
    }
    assert_eq!(
        f.dp.proto_counters().unwrap(),
        want_classes,
        "protocol classes"
    );
    println!(
        "storm: {FRAMES} frames ({valid} valid, {mutated} mutated, {random} random) in {:.1}s, \
         0 verdict mismatches; per (service, verdict): {expected:?}; reasons: {reasons:?}",
        elapsed.as_secs_f64()
    );
}
