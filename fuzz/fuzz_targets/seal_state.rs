#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(st) = sealkeeper::core::state::RootState::from_json(data) {
        let _ = st.is_current("hsm-pair");
        if let Some(w) = &st.shares.wrapping {
            let _ = w.root_from_split_key(&[0u8; 32], "x");
        }
        let _ = sealkeeper::core::state::open_keyring(&[0u8; 32], "x", &st.keyring);
    }
});
