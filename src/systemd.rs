//! systemd integration: READY=1 once the listeners are up, STATUS= with the seal state and the
//! member that unsealed, and WATCHDOG=1 from the daemon's own health loop. Without $NOTIFY_SOCKET
//! (not under systemd) every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::core::Core;
use crate::seal::MemberState;

/// The one-line status systemd shows (`systemctl status sealkeeper`).
pub fn status_line(core: &Core) -> String {
    let st = core.status();
    let down: Vec<String> = st
        .seal
        .members
        .iter()
        .filter(|m| !matches!(m.state, MemberState::Healthy | MemberState::Unknown))
        .map(|m| format!("{} {}", m.name, m.state))
        .collect();
    let members = if down.is_empty() {
        String::new()
    } else {
        format!("; {}", down.join(", "))
    };
    match st.state.as_str() {
        "unsealed" => format!(
            "unsealed by {}{members}",
            st.unsealed_by.unwrap_or_default()
        ),
        "uninitialized" => "uninitialized: run `sealkeeper operator init`".to_string(),
        _ if st.manually_sealed => "sealed by an operator".to_string(),
        _ => match st.last_unseal_error {
            Some(e) => format!(
                "sealed, retrying: {}",
                e.chars().take(160).collect::<String>()
            ),
            None => "sealed, unsealing".to_string(),
        },
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(core: &Core) {
    let status = status_line(core);
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends STATUS= when it changes and, when systemd asked for a watchdog, WATCHDOG=1 at half its
/// period, each time after checking that the core answers (its locks are not stuck).
pub async fn run(core: Arc<Core>) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(5))
        .max(Duration::from_millis(20));
    let mut last = String::new();
    loop {
        tokio::time::sleep(period).await;
        let status = status_line(&core);
        let mut states = Vec::new();
        if status != last {
            states.push(NotifyState::Status(&status));
        }
        if watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        if !states.is_empty() {
            notify(&states);
        }
        last = status;
    }
}
