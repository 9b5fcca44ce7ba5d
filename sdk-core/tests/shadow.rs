//! Shadow semantics: AWS IoT merge and delta rules, versions, conflicts,
//! backoff, and refusal of bad input without change.

mod common;
use common::*;
use lanyard_core::shadow::*;
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use lanyard_core::{CapacityError, DecodeError, Error, PathError};

fn p(s: &str) -> PathBuf {
    PathBuf::from_dotted(s).unwrap()
}

mod aws_semantics {
    use super::*;

    #[test]
    fn delta_holds_desired_leaves_that_differ_and_recurses_into_maps() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        let d = tree(&[
            ("a.b", Value::Int(1)),
            ("a.c", Value::Int(2)),
            ("x", Value::Bool(true)),
        ]);
        doc.apply_desired(&d, None, 1).unwrap();
        let r = tree(&[
            ("a.b", Value::Int(1)),
            ("a.z", Value::Int(9)),
            ("x", Value::Bool(false)),
        ]);
        doc.apply_reported(&r, None, 2).unwrap();
        assert_eq!(delta(&doc), pairs(&[("a.c", "2"), ("x", "true")]));
    }

    #[test]
    fn null_deletes_a_leaf_or_a_whole_map_and_ignores_missing_keys() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        let d = tree(&[
            ("a.b", Value::Int(1)),
            ("a.c", Value::Int(2)),
            ("k", Value::Int(3)),
        ]);
        doc.apply_desired(&d, None, 1).unwrap();
        doc.apply_desired(
            &tree(&[("a", Value::Null), ("nope.x", Value::Null)]),
            None,
            2,
        )
        .unwrap();
        assert_eq!(leaves(doc.desired()), pairs(&[("k", "3")]));
        doc.apply_desired(&tree(&[("k", Value::Null)]), None, 3)
            .unwrap();
        assert!(doc.desired().is_empty());
        // A null below a leaf is a no-op, as in AWS.
        doc.apply_desired(&tree(&[("k", Value::Int(1))]), None, 4)
            .unwrap();
        doc.apply_desired(&tree(&[("k.x", Value::Null)]), None, 5)
            .unwrap();
        assert_eq!(leaves(doc.desired()), pairs(&[("k", "1")]));
    }

    #[test]
    fn a_value_replaces_a_map_and_a_nested_value_replaces_a_leaf() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        doc.apply_desired(
            &tree(&[("a.b", Value::Int(1)), ("a.c", Value::Int(2))]),
            None,
            1,
        )
        .unwrap();
        doc.apply_desired(&tree(&[("a", Value::Text("flat"))]), None, 2)
            .unwrap();
        assert_eq!(leaves(doc.desired()), pairs(&[("a", "\"flat\"")]));
        doc.apply_desired(&tree(&[("a.deep.er", Value::Float(1.5))]), None, 3)
            .unwrap();
        assert_eq!(leaves(doc.desired()), pairs(&[("a.deep.er", "1.5")]));
    }

    #[test]
    fn unrelated_leaves_merge_and_keep_their_metadata() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        doc.apply_desired(&tree(&[("a", Value::Int(1))]), None, 100)
            .unwrap();
        doc.apply_desired(&tree(&[("b", Value::Int(2))]), None, 200)
            .unwrap();
        let a = doc.desired().get_dotted("a").unwrap();
        let b = doc.desired().get_dotted("b").unwrap();
        assert_eq!((a.meta.timestamp_ms, a.meta.version), (100, 1));
        assert_eq!((b.meta.timestamp_ms, b.meta.version), (200, 2));
        assert_eq!(a.meta.source, Source::Cloud);
    }

    #[cfg(feature = "arrays")]
    #[test]
    fn arrays_are_leaves_compared_whole() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        let a123 = int_array(&[1, 2, 3]);
        let a12 = int_array(&[1, 2]);
        doc.apply_desired(
            &tree(&[("arr", Value::Array(RawArray::from_cbor(&a123)))]),
            None,
            1,
        )
        .unwrap();
        doc.apply_reported(
            &tree(&[("arr", Value::Array(RawArray::from_cbor(&a12)))]),
            None,
            2,
        )
        .unwrap();
        assert_eq!(delta(&doc).len(), 1);
        doc.apply_reported(
            &tree(&[("arr", Value::Array(RawArray::from_cbor(&a123)))]),
            None,
            3,
        )
        .unwrap();
        assert!(delta(&doc).is_empty());
    }

    #[cfg(feature = "arrays")]
    #[test]
    fn arrays_are_canonicalised_so_equal_content_compares_equal() {
        // [1, 2] with an indefinite head and a wide integer: 9f 1b 00..01 02 ff
        let loose = [0x9f, 0x1b, 0, 0, 0, 0, 0, 0, 0, 1, 0x02, 0xff];
        let tight = int_array(&[1, 2]);
        let t = tree(&[("arr", Value::Array(RawArray::from_cbor(&loose)))]);
        match t.get_dotted("arr").unwrap().value {
            Value::Array(a) => assert_eq!(a.as_cbor(), &tight[..]),
            v => panic!("not an array: {v:?}"),
        }
    }

    #[cfg(feature = "arrays")]
    #[test]
    fn every_kind_of_array_item_is_canonicalised() {
        let loose = [
            0x9f, // indefinite array
            0xf4, 0xf5, 0xf6, // false, true, null
            0xf9, 0x3e, 0x00, // 1.5 as a half
            0xfa, 0x40, 0x20, 0x00, 0x00, // 2.5 as a single
            0x38, 0x02, // -3 with a one-byte argument
            0x78, 0x02, 0xc3, 0xa9, // "é" with a one-byte length
            0x41, 0x01, // h'01'
            0xbf, 0x61, b'k', 0x19, 0x00, 0x02, 0xff, // {_ "k": 2 (wide)}
            0x9f, 0xff, // [_ ]
            0xff,
        ];
        let mut e = minicbor::Encoder::new(Vec::new());
        e.array(10).unwrap();
        e.bool(false).unwrap().bool(true).unwrap().null().unwrap();
        e.f64(1.5).unwrap().f64(2.5).unwrap().i64(-3).unwrap();
        e.str("é").unwrap().bytes(&[1]).unwrap();
        e.map(1).unwrap().str("k").unwrap().i64(2).unwrap();
        e.array(0).unwrap();
        let tight = e.into_writer();
        let t = tree(&[("arr", Value::Array(RawArray::from_cbor(&loose)))]);
        match t.get_dotted("arr").unwrap().value {
            Value::Array(a) => assert_eq!(a.as_cbor(), &tight[..]),
            v => panic!("not an array: {v:?}"),
        }
        // What has no canonical form here is refused and nothing stored:
        // a tag, an indefinite string, undefined.
        for odd in [
            &[0x81, 0xc1, 0x01][..],
            &[0x81, 0x7f, 0x61, b'a', 0xff],
            &[0x81, 0xf7],
        ] {
            let mut t = Tree::new();
            let err = t
                .insert(&p("arr"), Value::Array(RawArray::from_cbor(odd)))
                .unwrap_err();
            assert_eq!(
                err,
                Error::Decode(DecodeError::Unsupported { at: 1 }),
                "{odd:02x?}"
            );
            assert!(t.is_empty());
        }
    }

    #[cfg(feature = "arrays")]
    #[test]
    fn an_array_that_overflows_the_pool_is_refused_and_nothing_is_kept() {
        let mut t: StateTree<4, 32> = StateTree::new();
        t.insert(&p("a"), Value::Int(1)).unwrap();
        // 40 integers written wide (9 bytes each): still 41 bytes once
        // canonical, more than the 31 the pool has left.
        let mut e = minicbor::Encoder::new(Vec::new());
        e.begin_array().unwrap();
        for i in 0..40u64 {
            e.u64(i).unwrap();
        }
        e.end().unwrap();
        let wide = e.into_writer();
        let before = leaves(&t);
        assert_eq!(
            t.insert(&p("arr"), Value::Array(RawArray::from_cbor(&wide))),
            Err(Error::Capacity(CapacityError::Pool { capacity: 32 }))
        );
        assert_eq!(leaves(&t), before);
        // The pool holds nothing of the refused array: a small one fits.
        let small = int_array(&[1, 2, 3]);
        t.insert(&p("arr"), Value::Array(RawArray::from_cbor(&small)))
            .unwrap();
        match t.get_dotted("arr").unwrap().value {
            Value::Array(a) => assert_eq!(a.as_cbor(), &small[..]),
            v => panic!("not an array: {v:?}"),
        }
    }

    #[test]
    fn floats_compare_by_bits_so_nan_never_keeps_a_delta_open() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        doc.apply_desired(&tree(&[("f", Value::Float(f64::NAN))]), None, 1)
            .unwrap();
        doc.apply_reported(&tree(&[("f", Value::Float(f64::NAN))]), None, 2)
            .unwrap();
        assert!(doc.in_sync());
        // 1 and 1.0 are different types.
        doc.apply_reported(&tree(&[("f", Value::Int(1))]), None, 3)
            .unwrap();
        doc.apply_desired(&tree(&[("f", Value::Float(1.0))]), None, 4)
            .unwrap();
        assert!(!doc.in_sync());
    }
}

mod versions_and_bad_input {
    use super::*;

    #[test]
    fn every_accepted_update_increments_the_version_and_stale_ones_are_refused() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        assert_eq!(
            doc.apply_desired(&tree(&[("a", Value::Int(1))]), Some(0), 1),
            Ok(1)
        );
        assert_eq!(
            doc.apply_reported(&tree(&[("a", Value::Int(1))]), None, 2),
            Ok(2)
        );
        let before = encoded(&doc);
        let err = doc
            .apply_desired(&tree(&[("a", Value::Int(5))]), Some(1), 3)
            .unwrap_err();
        assert_eq!(
            err,
            Error::VersionConflict {
                expected: 1,
                current: 2
            }
        );
        assert!(
            err.to_string()
                .contains("expects version 1, document is at 2")
        );
        assert_eq!(encoded(&doc), before);
    }

    #[test]
    fn over_capacity_updates_leave_the_document_byte_for_byte_unchanged() {
        let mut doc: Shadow<4, 64> = Shadow::new(ConflictPolicy::CloudWins);
        let mut up: StateTree<8, 256> = StateTree::new();
        for k in ["a", "b", "c"] {
            up.insert(&p(k), Value::Int(1)).unwrap();
        }
        doc.apply_desired(&up, None, 1).unwrap();
        let mut buf = [0u8; 512];
        let n = doc.encode(&mut buf).unwrap();
        let before = buf[..n].to_vec();

        let mut too_many: StateTree<8, 256> = StateTree::new();
        for k in ["d", "e"] {
            too_many.insert(&p(k), Value::Int(1)).unwrap();
        }
        assert_eq!(
            doc.apply_desired(&too_many, None, 2),
            Err(Error::Capacity(CapacityError::Leaves { capacity: 4 }))
        );
        let mut too_big: StateTree<8, 256> = StateTree::new();
        too_big
            .insert(&p("a"), Value::Text(&"x".repeat(80)))
            .unwrap();
        assert_eq!(
            doc.apply_reported(&too_big, None, 2),
            Err(Error::Capacity(CapacityError::Pool { capacity: 64 }))
        );
        // An atomic two-part update where only the second part overflows.
        assert!(doc.apply(Some(&up), Some(&too_big), None, 2).is_err());
        let n2 = doc.encode(&mut buf).unwrap();
        assert_eq!(&buf[..n2], &before[..]);
        assert_eq!(doc.version(), 1);
    }

    #[test]
    fn malformed_messages_get_typed_errors() {
        type Up = ShadowUpdate<8, 256>;
        // {2: {"t": 1}, 4: 1}
        let good = [0xa2, 0x02, 0xa1, 0x61, b't', 0x01, 0x04, 0x01];
        assert!(Up::decode(&good).is_ok());
        for cut in 0..good.len() {
            assert!(Up::decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        assert_eq!(
            Up::decode(&good[..4]),
            Err(Error::Decode(DecodeError::Truncated))
        );
        // Trailing byte.
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(
            Up::decode(&trailing),
            Err(Error::Decode(DecodeError::TrailingBytes { at: 8 }))
        );
        // Missing timestamp.
        assert_eq!(
            Up::decode(&[0xa1, 0x02, 0xa0]),
            Err(Error::Decode(DecodeError::MissingField("timestamp")))
        );
        // Integer key in the state map.
        assert!(matches!(
            Up::decode(&[0xa2, 0x02, 0xa1, 0x01, 0x01, 0x04, 0x01]),
            Err(Error::Decode(DecodeError::Malformed {
                what: "a text key",
                ..
            }))
        ));
        // Duplicate key.
        assert!(matches!(
            Up::decode(&[
                0xa2, 0x02, 0xa2, 0x61, b't', 0x01, 0x61, b't', 0x02, 0x04, 0x01
            ]),
            Err(Error::Decode(DecodeError::DuplicateKey { .. }))
        ));
        // A tag where a value should be.
        assert!(matches!(
            Up::decode(&[0xa2, 0x02, 0xa1, 0x61, b't', 0xc1, 0x01, 0x04, 0x01]),
            Err(Error::Decode(DecodeError::Unsupported { .. }))
        ));
        // Unsigned integer above i64::MAX.
        let mut big = vec![0xa2, 0x02, 0xa1, 0x61, b't', 0x1b];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        big.extend_from_slice(&[0x04, 0x01]);
        assert!(matches!(
            Up::decode(&big),
            Err(Error::Decode(DecodeError::IntegerOutOfRange { .. }))
        ));
    }

    #[test]
    fn decoding_into_a_reused_update_forgets_the_previous_message() {
        let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(0);
        // {1: {"a": 1}, 3: 4, 4: 1}
        up.decode_into(&[0xa3, 0x01, 0xa1, 0x61, b'a', 0x01, 0x03, 0x04, 0x04, 0x01])
            .unwrap();
        assert_eq!(
            (up.desired.as_ref().map(|t| t.len()), up.expected_version),
            (Some(1), Some(4))
        );
        // {2: {"b": 2}, 4: 2}
        up.decode_into(&[0xa2, 0x02, 0xa1, 0x61, b'b', 0x02, 0x04, 0x02])
            .unwrap();
        assert!(up.desired.is_none());
        assert_eq!(up.expected_version, None);
        assert_eq!(leaves(up.reported.as_ref().unwrap()), pairs(&[("b", "2")]));
        assert_eq!(up.timestamp_ms, 2);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        // {2: {"k": {"k": ... 9 levels ... 1}}, 4: 1}
        let mut b = vec![0xa2, 0x02];
        for _ in 0..=MAX_DEPTH {
            b.extend_from_slice(&[0xa1, 0x61, b'k']);
        }
        b.push(0x01);
        b.extend_from_slice(&[0x04, 0x01]);
        assert_eq!(
            ShadowUpdate::<8, 256>::decode(&b),
            Err(Error::Decode(DecodeError::Path(PathError::TooDeep)))
        );
    }

    #[test]
    fn a_buffer_too_small_is_untouched_and_the_error_names_the_size() {
        let t = tree(&[("a", Value::Text("hello"))]);
        let need = t.encoded_len();
        let mut small = vec![0xEEu8; need - 1];
        assert_eq!(
            t.encode(&mut small),
            Err(Error::Encode(lanyard_core::EncodeError::BufferTooSmall {
                needed: need
            }))
        );
        assert!(small.iter().all(|b| *b == 0xEE));
    }

    #[test]
    fn the_document_round_trips_through_cbor_with_sync_state() {
        let mut doc = Doc::new(ConflictPolicy::ManualResolve);
        doc.apply_desired(
            &tree(&[("s", Value::Int(72)), ("t", Value::Text("x"))]),
            None,
            1_000,
        )
        .unwrap();
        doc.apply_reported(
            &tree(&[("s", Value::Int(68)), ("b", Value::Bytes(b"\x01"))]),
            None,
            1_500,
        )
        .unwrap();
        let _ = doc.sync(2_000, 0, |_| {}).unwrap();
        assert_eq!(doc.parked().count(), 1);
        let bytes = encoded(&doc);
        let back = Doc::decode(&bytes, ConflictPolicy::ManualResolve).unwrap();
        assert_eq!(encoded(&back), bytes);
        assert_eq!(back.desired(), doc.desired());
        assert_eq!(back.reported(), doc.reported());
        assert_eq!(back.parked().count(), 1);
        assert_eq!(back.version(), doc.version());
    }

    #[test]
    fn deltas_round_trip() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        doc.apply_desired(
            &tree(&[("a.b", Value::Int(1)), ("c", Value::Text("x"))]),
            None,
            7,
        )
        .unwrap();
        let delta: ShadowDelta<64, 4096> = ShadowDelta::of(&doc, 9).unwrap();
        let mut buf = [0u8; 256];
        let n = delta.encode(&mut buf).unwrap();
        let back: ShadowDelta<64, 4096> = ShadowDelta::decode(&buf[..n]).unwrap();
        assert_eq!((back.version, back.timestamp_ms), (1, 9));
        assert_eq!(leaves(&back.state), leaves(&delta.state));
    }
}

mod conflicts {
    use super::*;

    /// The seed's thermostat: the app sets 72 at `cloud_ts` while the user
    /// presses the button for 68 at `device_ts`, from an agreed 70.
    fn thermostat(policy: ConflictPolicy, cloud_ts: u64, device_ts: u64) -> Doc {
        let mut doc = Doc::new(policy);
        doc.apply_desired(&tree(&[("temp", Value::Int(70))]), None, 0)
            .unwrap();
        doc.apply_reported(&tree(&[("temp", Value::Int(70))]), None, 0)
            .unwrap();
        let _ = doc.sync(0, 0, |_| {}).unwrap();
        doc.apply_desired(&tree(&[("temp", Value::Int(72))]), None, cloud_ts)
            .unwrap();
        doc.apply_reported(&tree(&[("temp", Value::Int(68))]), None, device_ts)
            .unwrap();
        doc
    }

    fn sync_once(doc: &mut Doc, now: u64) -> Vec<(ConflictPolicy, Option<Source>, String, String)> {
        let mut seen = Vec::new();
        let _ = doc
            .sync(now, 0, |c| {
                seen.push((
                    c.policy,
                    c.winner,
                    format!("{:?}", c.cloud),
                    format!("{:?}", c.device),
                ))
            })
            .unwrap();
        seen
    }

    fn temp(doc: &Doc) -> Value<'_> {
        doc.desired().get_dotted("temp").unwrap().value
    }

    #[test]
    fn cloud_wins_keeps_desired_and_the_delta_pushes_it_once() {
        let mut doc = thermostat(ConflictPolicy::CloudWins, 10_000, 10_500);
        let seen = sync_once(&mut doc, 11_000);
        assert_eq!(
            seen,
            vec![(
                ConflictPolicy::CloudWins,
                Some(Source::Cloud),
                "72".into(),
                "68".into()
            )]
        );
        assert_eq!(temp(&doc), Value::Int(72));
        assert_eq!(delta(&doc), pairs(&[("temp", "72")]));
        // The device re-reports 68 before it applies the delta: no new conflict.
        doc.apply_reported(&tree(&[("temp", Value::Int(68))]), None, 11_500)
            .unwrap();
        assert!(sync_once(&mut doc, 20_000).is_empty());
        // It applies the delta: in sync, and it stays so.
        doc.apply_reported(&tree(&[("temp", Value::Int(72))]), None, 21_000)
            .unwrap();
        assert!(sync_once(&mut doc, 22_000).is_empty());
        assert!(doc.in_sync());
        assert_eq!(doc.stats().count(ConflictPolicy::CloudWins), 1);
        assert_eq!(doc.stats().cloud_won, 1);
    }

    #[test]
    fn a_device_change_after_a_synced_cloud_change_is_still_a_conflict() {
        // A host syncs after every message: the cloud's 72 is synced (the
        // delta is on its way) before the button's 68 arrives.
        let mut doc = Doc::new(ConflictPolicy::DeviceWins);
        doc.apply_desired(&tree(&[("temp", Value::Int(70))]), None, 0)
            .unwrap();
        doc.apply_reported(&tree(&[("temp", Value::Int(70))]), None, 0)
            .unwrap();
        assert!(sync_once(&mut doc, 0).is_empty());
        doc.apply_desired(&tree(&[("temp", Value::Int(72))]), None, 10_000)
            .unwrap();
        assert!(sync_once(&mut doc, 10_000).is_empty());
        doc.apply_reported(&tree(&[("temp", Value::Int(68))]), None, 10_500)
            .unwrap();
        let seen = sync_once(&mut doc, 11_000);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, Some(Source::Device));
        assert_eq!(temp(&doc), Value::Int(68));
    }

    #[test]
    fn device_wins_makes_the_reported_value_desired() {
        let mut doc = thermostat(ConflictPolicy::DeviceWins, 10_000, 9_000);
        let seen = sync_once(&mut doc, 11_000);
        assert_eq!(seen[0].1, Some(Source::Device));
        assert_eq!(temp(&doc), Value::Int(68));
        assert_eq!(
            doc.desired().get_dotted("temp").unwrap().meta.source,
            Source::Device
        );
        assert!(doc.in_sync());
    }

    #[test]
    fn latest_wins_by_timestamp_with_ties_within_skew_to_the_cloud() {
        let mut doc = thermostat(ConflictPolicy::LatestWins, 10_000, 12_000);
        assert_eq!(sync_once(&mut doc, 13_000)[0].1, Some(Source::Device));
        assert_eq!(temp(&doc), Value::Int(68));

        let mut doc = thermostat(ConflictPolicy::LatestWins, 12_000, 10_000);
        assert_eq!(sync_once(&mut doc, 13_000)[0].1, Some(Source::Cloud));
        assert_eq!(temp(&doc), Value::Int(72));

        // Device 0.9 s newer: inside the 1 s skew tolerance, so a tie: cloud.
        let mut doc = thermostat(ConflictPolicy::LatestWins, 10_000, 10_900);
        assert_eq!(sync_once(&mut doc, 13_000)[0].1, Some(Source::Cloud));
    }

    #[test]
    fn manual_resolve_parks_the_conflict_until_an_operator_decides() {
        let mut doc = thermostat(ConflictPolicy::ManualResolve, 10_000, 10_500);
        let seen = sync_once(&mut doc, 11_000);
        assert_eq!(seen[0].1, None);
        let parked: Vec<_> = doc.parked().map(|(p, t)| (p.to_string(), t)).collect();
        assert_eq!(parked, vec![("temp".to_string(), 11_000)]);
        // Meanwhile the leaf keeps its reported value: no delta asks for 72.
        assert!(delta(&doc).is_empty());
        assert_eq!(
            doc.reported().get_dotted("temp").unwrap().value,
            Value::Int(68)
        );
        // Parked conflicts are not re-counted.
        assert!(sync_once(&mut doc, 30_000).is_empty());

        let mut device = doc.clone();
        device
            .resolve(p("temp").as_path(), Source::Device, 40_000)
            .unwrap();
        assert_eq!(temp(&device), Value::Int(68));
        assert!(device.in_sync() && device.parked().count() == 0);

        doc.resolve(p("temp").as_path(), Source::Cloud, 40_000)
            .unwrap();
        assert_eq!(delta(&doc), pairs(&[("temp", "72")]));
        assert!(sync_once(&mut doc, 41_000).is_empty());
        assert_eq!(
            doc.resolve(p("temp").as_path(), Source::Cloud, 1),
            Err(Error::NotParked)
        );
    }

    #[test]
    fn the_manual_queue_is_bounded_and_overflow_is_counted_not_lost() {
        let mut doc = Doc::new(ConflictPolicy::ManualResolve);
        let keys: Vec<String> = (0..MAX_PARKED + 2).map(|i| format!("k{i}")).collect();
        let d: Vec<_> = keys.iter().map(|k| (k.as_str(), Value::Int(1))).collect();
        let r: Vec<_> = keys.iter().map(|k| (k.as_str(), Value::Int(2))).collect();
        doc.apply_desired(&tree(&d), None, 1).unwrap();
        doc.apply_reported(&tree(&r), None, 2).unwrap();
        let _ = doc.sync(10, 0, |_| {}).unwrap();
        assert_eq!(doc.parked().count(), MAX_PARKED);
        assert_eq!(doc.stats().park_overflow, 2);
        // The two that did not fit are still undecided, so the delta carries
        // them until a later sync can park them.
        assert_eq!(delta(&doc).len(), 2);
    }

    #[test]
    fn policies_are_chosen_by_longest_path_prefix() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        doc.set_policy(&p("sensors"), ConflictPolicy::DeviceWins)
            .unwrap();
        doc.set_policy(&p("sensors.calibration"), ConflictPolicy::ManualResolve)
            .unwrap();
        assert_eq!(
            doc.policy_for(p("config.rate").as_path()),
            ConflictPolicy::CloudWins
        );
        assert_eq!(
            doc.policy_for(p("sensors.temp").as_path()),
            ConflictPolicy::DeviceWins
        );
        assert_eq!(
            doc.policy_for(p("sensors.calibration.offset").as_path()),
            ConflictPolicy::ManualResolve
        );
        doc.set_policy(&PathBuf::new(), ConflictPolicy::LatestWins)
            .unwrap();
        assert_eq!(
            doc.policy_for(p("other").as_path()),
            ConflictPolicy::LatestWins
        );
    }

    #[test]
    fn a_device_only_change_follows_the_policy_without_a_conflict() {
        let mut doc = Doc::new(ConflictPolicy::CloudWins);
        doc.set_policy(&p("user"), ConflictPolicy::LatestWins)
            .unwrap();
        doc.apply_desired(
            &tree(&[("cfg", Value::Int(1)), ("user", Value::Int(1))]),
            None,
            0,
        )
        .unwrap();
        doc.apply_reported(
            &tree(&[("cfg", Value::Int(1)), ("user", Value::Int(1))]),
            None,
            0,
        )
        .unwrap();
        let _ = doc.sync(0, 0, |_| {}).unwrap();
        doc.apply_reported(
            &tree(&[("cfg", Value::Int(2)), ("user", Value::Int(2))]),
            None,
            5,
        )
        .unwrap();
        assert!(sync_once(&mut doc, 10).is_empty());
        // Configuration is the cloud's: the delta pushes it back.
        assert_eq!(delta(&doc), pairs(&[("cfg", "1")]));
        // The user's setting follows the device.
        assert_eq!(
            doc.desired().get_dotted("user").unwrap().value,
            Value::Int(2)
        );
    }

    #[test]
    fn after_a_conflict_syncs_back_off_exponentially_with_full_jitter() {
        let mut doc = thermostat(ConflictPolicy::CloudWins, 10_000, 10_500);
        let r = doc.sync(100_000, u32::MAX, |_| {}).unwrap();
        assert_eq!(r.next_sync_not_before_ms, 101_000);
        assert_eq!(
            doc.sync(100_999, 0, |_| {}),
            Err(Error::BackingOff { until_ms: 101_000 })
        );
        // A second conflict in a row doubles the window; jitter halves it.
        doc.apply_desired(&tree(&[("temp", Value::Int(75))]), None, 101_000)
            .unwrap();
        doc.apply_reported(&tree(&[("temp", Value::Int(60))]), None, 101_000)
            .unwrap();
        let r = doc.sync(101_000, u32::MAX / 2, |_| {}).unwrap();
        assert_eq!(r.conflicts, 1);
        assert_eq!(r.next_sync_not_before_ms, 102_000 - 1);
        // A clean sync resets it.
        doc.apply_reported(&tree(&[("temp", Value::Int(75))]), None, 103_000)
            .unwrap();
        let r = doc.sync(103_000, u32::MAX, |_| {}).unwrap();
        assert_eq!((r.conflicts, r.next_sync_not_before_ms), (0, 103_000));
    }
}

mod in_place_updates {
    use super::*;

    #[test]
    fn repeated_overwrites_of_growing_text_never_exhaust_the_pool() {
        // A tiny pool: in-place writes of a new length append, and when the
        // pool is full the update falls back to a rebuild that compacts it.
        let mut doc: Shadow<4, 64> = Shadow::new(ConflictPolicy::CloudWins);
        let mut up: StateTree<4, 64> = StateTree::new();
        up.insert(&p("a"), Value::Text("x")).unwrap();
        up.insert(&p("n"), Value::Int(0)).unwrap();
        doc.apply_desired(&up, None, 0).unwrap();
        for i in 0..200u64 {
            let text = "y".repeat(1 + (i as usize % 9));
            let mut up: StateTree<4, 64> = StateTree::new();
            up.insert(&p("a"), Value::Text(&text)).unwrap();
            up.insert(&p("n"), Value::Int(i as i64)).unwrap();
            doc.apply_desired(&up, None, i).unwrap();
            assert_eq!(
                doc.desired().get_dotted("a").unwrap().value,
                Value::Text(&text)
            );
            assert!(doc.desired().pool_used() <= 64);
        }
        assert_eq!(doc.version(), 201);
    }

    #[test]
    fn a_leaf_moved_by_an_in_place_write_can_still_be_replaced_and_removed() {
        let mut doc = Doc::new(ConflictPolicy::ManualResolve);
        doc.apply_desired(
            &tree(&[("s", Value::Text("aa")), ("t", Value::Text("b"))]),
            None,
            0,
        )
        .unwrap();
        // Longer text: written at the end of the pool, away from its path.
        doc.apply_desired(&tree(&[("s", Value::Text("ccc"))]), None, 1)
            .unwrap();
        doc.apply_reported(&tree(&[("s", Value::Text("dd"))]), None, 2)
            .unwrap();
        let _ = doc.sync(10, 0, |_| {}).unwrap();
        assert_eq!(doc.parked().count(), 1);
        // Resolving for the device replaces the moved leaf.
        doc.resolve(p("s").as_path(), Source::Device, 20).unwrap();
        assert_eq!(
            leaves(doc.desired()),
            pairs(&[("s", "\"dd\""), ("t", "\"b\"")])
        );
        let bytes = encoded(&doc);
        let back = Doc::decode(&bytes, ConflictPolicy::ManualResolve).unwrap();
        assert_eq!(back.desired(), doc.desired());
        // `t` was never reported: it is the whole delta, on both copies.
        assert_eq!(delta(&back), pairs(&[("t", "\"b\"")]));
        assert_eq!(delta(&doc), delta(&back));
    }

    #[test]
    fn an_update_mixing_in_place_and_structural_parts_stays_atomic() {
        let mut doc: Shadow<4, 64> = Shadow::new(ConflictPolicy::CloudWins);
        doc.apply(
            Some(&tree(&[("a", Value::Int(1))])),
            Some(&tree(&[("a", Value::Int(2))])),
            None,
            0,
        )
        .unwrap();
        let before = {
            let mut b = [0u8; 512];
            let n = doc.encode(&mut b).unwrap();
            b[..n].to_vec()
        };
        // Desired would be in place; reported needs 5 leaves and cannot fit.
        let big = tree(&[
            ("k1", Value::Int(1)),
            ("k2", Value::Int(1)),
            ("k3", Value::Int(1)),
            ("k4", Value::Int(1)),
            ("k5", Value::Int(1)),
        ]);
        assert!(
            doc.apply(Some(&tree(&[("a", Value::Int(9))])), Some(&big), None, 1)
                .is_err()
        );
        let mut b = [0u8; 512];
        let n = doc.encode(&mut b).unwrap();
        assert_eq!(&b[..n], &before[..]);
        // Desired rebuilt, reported in place: the flags still come out right.
        doc.apply(
            Some(&tree(&[("a", Value::Int(2)), ("z", Value::Int(0))])),
            Some(&tree(&[("a", Value::Int(3))])),
            None,
            2,
        )
        .unwrap();
        let mut d: StateTree<4, 64> = StateTree::new();
        doc.delta_into(&mut d).unwrap();
        assert_eq!(leaves(&d), pairs(&[("a", "2"), ("z", "0")]));
    }
}

/// Map keys as the decoder checks them: UTF-8 (ASCII taken on a fast
/// path, other text by the full check), no NUL, a map left as it was for
/// the next key.
#[test]
fn keys_are_checked_as_text_and_as_path_keys_when_decoded() {
    type T = StateTree<8, 256>;
    // {"température": 21, "a": {"b": 1}, "c": 2}
    let mut ok = vec![0xa3, 0x6c];
    ok.extend_from_slice("température".as_bytes());
    ok.extend_from_slice(&[0x15, 0x61, b'a', 0xa1, 0x61, b'b', 0x01, 0x61, b'c', 0x02]);
    let t = T::decode(&ok).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(
        t.get(p("a.b").as_path()).map(|e| e.value),
        Some(Value::Int(1))
    );
    assert_eq!(
        t.get(p("c").as_path()).map(|e| e.value),
        Some(Value::Int(2))
    );
    let mut buf = [0u8; 64];
    let n = t.encode(&mut buf).unwrap();
    assert_eq!(T::decode(&buf[..n]).unwrap(), t);
    // Not UTF-8; a NUL inside a key.
    assert!(matches!(
        T::decode(&[0xa1, 0x62, 0xc3, 0x28, 0x01]),
        Err(Error::Decode(DecodeError::Malformed {
            what: "UTF-8 text",
            ..
        }))
    ));
    assert_eq!(
        T::decode(&[0xa1, 0x63, b'a', 0, b'b', 0x01]),
        Err(Error::Decode(DecodeError::Path(PathError::NulInKey)))
    );
}
