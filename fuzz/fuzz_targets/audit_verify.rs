#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("sk-fuzz-audit-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("audit.log");
    if std::fs::write(&path, data).is_ok() {
        let _ = sealkeeper::audit::verify::verify(&[path]);
    }
});
