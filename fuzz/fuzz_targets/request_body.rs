#![no_main]
use std::sync::{Arc, OnceLock};

use sealkeeper::core::UnsealedKeys;
use sealkeeper::secret::{LockedBytes, MemoryPolicy};
use sealkeeper::storage::FileStorage;
use sealkeeper::transit::Transit;

fn transit() -> &'static Transit {
    static T: OnceLock<Transit> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sk-fuzz-transit-{}", std::process::id()));
        let storage = Arc::new(FileStorage::open(&dir).expect("storage"));
        let key = |b| LockedBytes::from_slice(&[b; 32], MemoryPolicy::AllowUnlocked).expect("memory");
        let keys = Arc::new(UnsealedKeys::new(key(1), vec![(1, key(2))]));
        let t = Transit::load(storage, keys, MemoryPolicy::AllowUnlocked).expect("transit");
        let _ = t.create_key("k");
        t
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for op in ["encrypt", "decrypt", "rewrap"] {
        let _ = sealkeeper::http::transit::process_body(transit(), op, "k", data, 1024);
    }
    let _ = sealkeeper::admin::parse_bodies(data);
});
