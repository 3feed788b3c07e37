//! The metrics exposition: the event series (`crate::metrics`) and the state series, read from the
//! core's status at each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::core::Core;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SealLabels {
    seal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    seal: String,
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The whole exposition: the event series and the state read from `core` now.
pub fn render(core: &Core) -> String {
    let mut state = Registry::with_prefix("sealkeeper");
    let st = core.status();
    let states = Family::<StateLabels, Gauge>::default();
    for s in ["uninitialized", "sealed", "unsealed"] {
        states
            .get_or_create(&StateLabels {
                state: s.to_string(),
            })
            .set(i64::from(st.state == s));
    }
    state.register(
        "state",
        "The node's state: 1 for the current one of uninitialized, sealed, unsealed",
        states,
    );
    let restart = Gauge::<i64>::default();
    restart.set(i64::from(st.restart_safe));
    state.register(
        "restart_safe",
        "1 when a restart now would unseal (a member of a seal that wraps the current root key answered recently)",
        restart,
    );
    let seal_up = Family::<SealLabels, Gauge>::default();
    let seal_since = Family::<SealLabels, Gauge>::default();
    let member_up = Family::<MemberLabels, Gauge>::default();
    let member_since = Family::<MemberLabels, Gauge>::default();
    let wraps = Family::<SealLabels, Gauge>::default();
    for s in &st.seals {
        let l = SealLabels {
            seal: s.name.clone(),
        };
        seal_up.get_or_create(&l).set(i64::from(s.healthy));
        wraps.get_or_create(&l).set(i64::from(s.wrapping_current));
        if let Some(t) = s.unhealthy_since_unix {
            seal_since.get_or_create(&l).set(t as i64);
        }
        for m in &s.members {
            let l = MemberLabels {
                seal: s.name.clone(),
                member: m.name.clone(),
            };
            member_up.get_or_create(&l).set(i64::from(m.healthy));
            if let Some(t) = m.unhealthy_since_unix {
                member_since.get_or_create(&l).set(t as i64);
            }
        }
    }
    state.register(
        "seal_healthy",
        "1 when the seal answers (any member)",
        seal_up,
    );
    state.register_with_unit(
        "seal_unhealthy_since_timestamp",
        "When the seal became unhealthy (Unix time); absent while healthy",
        Unit::Seconds,
        seal_since,
    );
    state.register(
        "seal_wraps_current_root",
        "1 when the seal holds a wrapping of the current root key",
        wraps,
    );
    state.register(
        "seal_member_healthy",
        "1 when the member (HSM of a pair, KMS region or vault) answered its last call",
        member_up,
    );
    state.register_with_unit(
        "seal_member_unhealthy_since_timestamp",
        "When the member became unhealthy (Unix time); absent while healthy",
        Unit::Seconds,
        member_since,
    );
    let mut process = Registry::with_prefix("process");
    if let Some(rss) = resident_bytes() {
        let g = Gauge::<i64>::default();
        g.set(rss);
        process.register_with_unit("resident_memory", "Resident memory size", Unit::Bytes, g);
    }
    if let Some(fds) = open_descriptors() {
        let g = Gauge::<i64>::default();
        g.set(fds);
        process.register("open_fds", "Open file descriptors", g);
    }
    if let Some(max) = max_descriptors() {
        let g = Gauge::<i64>::default();
        g.set(max);
        process.register("max_fds", "The descriptor limit (RLIMIT_NOFILE)", g);
    }
    let mut out = String::new();
    let written = crate::metrics::get()
        .encode_events(&mut out)
        .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &state))
        .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &process))
        .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
    if written.is_err() {
        // Writing into a String cannot fail; if the encoder ever did, say so in the exposition.
        out = "# the metrics could not be encoded\n# EOF\n".into();
    }
    out
}

fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn open_descriptors() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

fn max_descriptors() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
