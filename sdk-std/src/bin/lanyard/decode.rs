//! `lanyard decode`: any SDK message as JSON.

use super::*;

pub(crate) fn decode(
    hex: Option<String>,
    file: Option<PathBuf>,
    kind: Option<String>,
) -> Result<(), String> {
    let bytes = match (hex, file) {
        (Some(h), None) => parse_hex(&h)?,
        (None, Some(f)) => std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?,
        _ => return Err("give the message in hex or with --file, not both".into()),
    };
    let kind = match kind {
        None => None,
        Some(k) => Some(
            MessageKind::ALL
                .into_iter()
                .find(|m| m.topic_suffix() == k)
                .ok_or_else(|| format!("unknown kind {k}"))?,
        ),
    };
    let (name, json) = describe(&bytes, kind)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "type": name, "message": json }))
            .unwrap_or_default()
    );
    Ok(())
}
