//! CBOR maps with text keys: the shape of every message between services
//! and operators' tools (readable in `lanyard decode`).

use minicbor::Decoder;

/// Reads one CBOR map with text keys at `d`, handing each key and the
/// decoder at its value to `field`: it reads the value and says
/// `Some(true)`, or `Some(false)` for a key it does not know (skipped).
/// `None` when anything does not read. The operator's messages, the
/// fleet events and the provisioning messages are such maps.
pub(crate) fn each_text_key<'b>(
    d: &mut Decoder<'b>,
    mut field: impl FnMut(&'b str, &mut Decoder<'b>) -> Option<bool>,
) -> Option<()> {
    for _ in 0..d.map().ok()?? {
        let key = d.str().ok()?;
        if !field(key, d)? {
            d.skip().ok()?;
        }
    }
    Some(())
}

/// [`each_text_key`] over the whole of `bytes`: nothing may follow the map.
pub(crate) fn read_text_map<'b>(
    bytes: &'b [u8],
    field: impl FnMut(&'b str, &mut Decoder<'b>) -> Option<bool>,
) -> Option<()> {
    let mut d = Decoder::new(bytes);
    each_text_key(&mut d, field)?;
    (d.position() == bytes.len()).then_some(())
}
