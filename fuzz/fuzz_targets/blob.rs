#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(blob) = sealkeeper::seal::WrappedBlob::from_json(data) {
        let ctx = sealkeeper::seal::BlobContext { installation_id: "x".into(), purpose: "root-key".into() };
        let _ = blob.check(&ctx, "pkcs11", "hsm-pair");
    }
});
