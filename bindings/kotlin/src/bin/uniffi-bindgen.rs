//! uniffi's bindings generator, built against the same uniffi as the
//! library: `uniffi-bindgen generate --library <lib> --language kotlin`.
fn main() {
    uniffi::uniffi_bindgen_main()
}
