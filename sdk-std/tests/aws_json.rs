//! The AWS JSON mode against the documents, deltas and error payloads shown
//! in the AWS IoT Device Shadow developer guide ("Device Shadow service
//! documents": request, /accepted, /delta, /documents and error documents;
//! "Delta state" and "Array values" examples), used as test vectors.

use lanyard_core::shadow::{ConflictPolicy, Shadow};
use lanyard_std::aws_json::{self, AwsJsonError, Part};
use serde_json::{Value as Json, json};

type Doc = Shadow<64, 4096>;
const NOW_MS: u64 = 1_700_000_123_456;

fn apply(doc: &mut Doc, req: Json) -> Result<u64, AwsJsonError> {
    let bytes = serde_json::to_vec(&req).unwrap();
    aws_json::parse_update::<64, 4096>(&bytes)?.apply_to(doc, NOW_MS)
}

#[test]
fn delta_state_example_recurses_into_nested_objects() {
    // Guide, "Delta state": desired color {r:255,g:255,b:0} vs reported
    // {r:255,g:0,b:255} gives a delta of {g:255,b:0}.
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    apply(
        &mut doc,
        json!({"state":{"desired":{"color":{"r":255,"g":255,"b":0}}}}),
    )
    .unwrap();
    apply(
        &mut doc,
        json!({"state":{"reported":{"color":{"r":255,"g":0,"b":255}}}}),
    )
    .unwrap();
    let delta =
        serde_json::to_value(aws_json::delta_document(&doc, NOW_MS, None).unwrap()).unwrap();
    assert_eq!(delta["state"], json!({"color":{"g":255,"b":0}}));
    assert_eq!(
        delta["metadata"]["color"]["g"]["timestamp"],
        json!(NOW_MS / 1000)
    );
    assert_eq!(delta["version"], json!(2));
}

#[test]
fn array_values_are_compared_whole() {
    // Guide, "Array values": an array in desired equal to the reported array
    // gives no delta; any difference puts the whole array in it.
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    apply(
        &mut doc,
        json!({"state":{"desired":{"colors":["RED","GREEN","BLUE"]}}}),
    )
    .unwrap();
    apply(
        &mut doc,
        json!({"state":{"reported":{"colors":["RED","GREEN"]}}}),
    )
    .unwrap();
    let delta =
        serde_json::to_value(aws_json::delta_document(&doc, NOW_MS, None).unwrap()).unwrap();
    assert_eq!(delta["state"], json!({"colors":["RED","GREEN","BLUE"]}));
    apply(
        &mut doc,
        json!({"state":{"reported":{"colors":["RED","GREEN","BLUE"]}}}),
    )
    .unwrap();
    assert!(doc.in_sync());
}

#[test]
fn request_and_accepted_documents_have_the_aws_shape() {
    // Guide, "Request state document" and "/accepted response state document".
    let req = json!({
        "state": {"desired": {"attribute1": 2, "attribute2": "string2", "attributeN": true}},
        "clientToken": "token",
        "version": 0
    });
    let bytes = serde_json::to_vec(&req).unwrap();
    let parsed = aws_json::parse_update::<64, 4096>(&bytes).unwrap();
    assert_eq!(parsed.client_token.as_deref(), Some("token"));
    assert_eq!(parsed.version, Some(0));
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    let v = parsed.apply_to(&mut doc, NOW_MS).unwrap();
    let accepted = serde_json::to_value(aws_json::accepted_document(&parsed, v, NOW_MS)).unwrap();
    let ts = NOW_MS / 1000;
    assert_eq!(
        accepted,
        json!({
            "state": {"desired": {"attribute1": 2, "attribute2": "string2", "attributeN": true}},
            "metadata": {"desired": {
                "attribute1": {"timestamp": ts},
                "attribute2": {"timestamp": ts},
                "attributeN": {"timestamp": ts}
            }},
            "timestamp": ts,
            "clientToken": "token",
            "version": 1
        })
    );
}

#[test]
fn get_accepted_holds_desired_reported_delta_and_metadata() {
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    apply(&mut doc, json!({"state":{"desired":{"a":1,"b":2}}})).unwrap();
    apply(&mut doc, json!({"state":{"reported":{"a":1}}})).unwrap();
    let got =
        serde_json::to_value(aws_json::get_document(&doc, NOW_MS, Some("t")).unwrap()).unwrap();
    assert_eq!(got["state"]["desired"], json!({"a":1,"b":2}));
    assert_eq!(got["state"]["reported"], json!({"a":1}));
    assert_eq!(got["state"]["delta"], json!({"b":2}));
    assert_eq!(
        got["metadata"]["reported"]["a"]["timestamp"],
        json!(NOW_MS / 1000)
    );
    assert_eq!(
        (got["version"].clone(), got["clientToken"].clone()),
        (json!(2), json!("t"))
    );
}

#[test]
fn documents_topic_shows_previous_and_current() {
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    apply(&mut doc, json!({"state":{"reported":{"x":1}}})).unwrap();
    let before = doc.clone();
    apply(&mut doc, json!({"state":{"reported":{"x":2}}})).unwrap();
    let docs =
        serde_json::to_value(aws_json::documents_document(&before, &doc, NOW_MS, None)).unwrap();
    assert_eq!(docs["previous"]["state"]["reported"]["x"], json!(1));
    assert_eq!(docs["current"]["state"]["reported"]["x"], json!(2));
    assert_eq!(docs["previous"]["version"], json!(1));
    assert_eq!(docs["current"]["version"], json!(2));
}

#[test]
fn null_deletes_keys_and_a_null_side_deletes_the_side() {
    // Guide, "Empty shadow document properties".
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    apply(&mut doc, json!({"state":{"desired":{"a":{"b":1},"c":2}}})).unwrap();
    apply(&mut doc, json!({"state":{"desired":{"a":null}}})).unwrap();
    assert_eq!(aws_json::tree_to_json(doc.desired()), json!({"c":2}));
    let bytes = br#"{"state":{"desired":null}}"#;
    let req = aws_json::parse_update::<64, 4096>(bytes).unwrap();
    assert_eq!(req.desired, Part::Clear);
    req.apply_to(&mut doc, NOW_MS).unwrap();
    assert!(doc.desired().is_empty());
    let got = serde_json::to_value(aws_json::get_document(&doc, NOW_MS, None).unwrap()).unwrap();
    assert!(got["state"].get("desired").is_none());
}

#[test]
fn error_documents_match_the_guide() {
    // Guide, "Error response document":
    // {"code": 409, "message": "Version conflict", "timestamp": ..., "clientToken": "token"}
    let mut doc = Doc::new(ConflictPolicy::CloudWins);
    apply(&mut doc, json!({"state":{"desired":{"a":1}}})).unwrap();
    let before = doc.clone();
    let err = apply(&mut doc, json!({"state":{"desired":{"a":2}},"version":7})).unwrap_err();
    assert_eq!(
        aws_json::error_document(&err, NOW_MS, Some("token")),
        json!({"code": 409, "message": "Version conflict", "timestamp": NOW_MS / 1000, "clientToken": "token"})
    );
    assert_eq!(doc.desired(), before.desired());

    let cases: &[(&[u8], u16, &str)] = &[
        (b"{not json", 400, "Invalid JSON"),
        (
            br#"{"clientToken":"x"}"#,
            400,
            "Missing required node: state",
        ),
        (br#"{"state":[]}"#, 400, "State node must be an object"),
        (
            br#"{"state":{"desired":5}}"#,
            400,
            "Desired node must be an object",
        ),
        (
            br#"{"state":{"reported":"x"}}"#,
            400,
            "Reported node must be an object",
        ),
        (br#"{"state":{},"version":-1}"#, 400, "Invalid version"),
        (
            br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}}}"#,
            400,
            "JSON contains too many levels of nesting; maximum is 8",
        ),
        (
            br#"{"state":{"desired":{"n":18446744073709551615}}}"#,
            400,
            "Number out of range: 18446744073709551615",
        ),
    ];
    for (input, code, message) in cases {
        let err = aws_json::parse_update::<64, 4096>(input).unwrap_err();
        assert_eq!(
            (err.code(), err.message().as_str()),
            (*code, *message),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn over_capacity_is_413_and_changes_nothing() {
    let mut doc: Shadow<4, 256> = Shadow::new(ConflictPolicy::CloudWins);
    let req = br#"{"state":{"desired":{"a":1,"b":2,"c":3,"d":4,"e":5}}}"#;
    let err = match aws_json::parse_update::<4, 256>(req) {
        Err(e) => e,
        Ok(r) => r.apply_to(&mut doc, NOW_MS).unwrap_err(),
    };
    assert_eq!(err.code(), 413);
    assert_eq!(doc.version(), 0);
}

#[test]
fn the_default_capacity_holds_a_realistic_8_kb_aws_document() {
    // 8 KB of state as AWS IoT counts it (JSON without whitespace): up to 8
    // sections x 8 groups x 6 leaves of mixed types, 3 levels, keys up to
    // 16 bytes, padded with a label until it reaches the limit.
    let mut state = serde_json::Map::new();
    'fill: for s in 0..8 {
        for g in 0..8 {
            let group = json!({
                "interval_ms": 15_000 + s * 100 + g,
                "threshold_pct": 10.5 + f64::from(g),
                "enabled": g % 2 == 0,
                "label": format!("section-{s}-group-{g}"),
                "calibration": [s, g, s + g],
                "firmware": "1.4.2-rc3",
            });
            let section = state
                .entry(format!("section_{s}"))
                .or_insert_with(|| json!({}));
            section[format!("group_{g}")] = group;
            if serde_json::to_vec(&state).unwrap().len() > 8_000 {
                break 'fill;
            }
        }
    }
    let size = serde_json::to_vec(&state).unwrap().len();
    assert!((7_000..=8_192).contains(&size), "document is {size} bytes");
    let req = serde_json::to_vec(&json!({"state": {"desired": state, "reported": state}})).unwrap();
    let mut doc: Box<Shadow> = Box::new(Shadow::new(ConflictPolicy::CloudWins));
    aws_json::parse_update::<
        { lanyard_core::shadow::DEFAULT_LEAVES },
        { lanyard_core::shadow::DEFAULT_POOL },
    >(&req)
    .unwrap()
    .apply_to(&mut doc, NOW_MS)
    .unwrap();
    assert!(doc.in_sync());
    assert_eq!(aws_json::tree_to_json(doc.desired()), Json::Object(state));
    assert!(doc.desired().len() > 250);
}
