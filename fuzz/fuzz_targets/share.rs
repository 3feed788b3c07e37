#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(share) = sealkeeper::recovery::Share::parse(text, "installation") {
            let _ = sealkeeper::recovery::combine(&[share]);
        }
    }
});
